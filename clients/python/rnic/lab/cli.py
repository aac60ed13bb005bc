"""`rnic lab up|down|status|exec|list|alltoall`: the command line of rnic.lab."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from .core import Lab, clear
from .paths import LabError, list_labs, load_state, run_root

USAGE_EXEC = "rnic lab exec [--name LAB] hK|all -- PROGRAM [ARGS...]"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnic lab", description="A virtual RDMA cluster on one machine: N hosts, each a "
        "network namespace with its own rnicd, on one bridge (docs/lab.md).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("up", help="make a lab of N hosts h1..hN (clears leftovers first)")
    s.add_argument("n", type=int, help="number of hosts")
    s.add_argument("--name", default="lab", help="lab name (default lab)")
    s.add_argument("--subnet", help="host addresses (default 10.77.0.0/16; with --loopback a "
                   "free 127.77.K.0/24)")
    s.add_argument("--mtu", type=int, help="MTU of the veths and the bridge (default 1500)")
    s.add_argument("--fault", action="append", metavar="[hK=]SPEC",
                   help="rnicd fault injection for every host, or hK=SPEC for one "
                   "(e.g. h2=drop=0.05); repeatable")
    s.add_argument("--delay", action="append", metavar="[hK=]MS",
                   help="delay every datagram a host sends by MS (rnicd's delay fault: "
                   "netem is not used); repeatable")
    s.add_argument("--rate", help="rate limit of each host's link, both ways (tbf), e.g. "
                   "100mbit")
    s.add_argument("--loopback", action="store_true", help="no namespaces: daemons on "
                   "127.x addresses (unprivileged, no isolation)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s = sub.add_parser("down", help="stop the daemons and remove everything of the lab")
    s.add_argument("--name", default="lab")
    s = sub.add_parser("status", help="hosts, addresses, daemons, QPs, counters")
    s.add_argument("--name", default="lab")
    s.add_argument("--json", action="store_true")
    sub.add_parser("list", help="the labs in the run directory")
    s = sub.add_parser("exec", help="run PROGRAM inside host hK (or all) on its rnicd: "
                       + USAGE_EXEC)
    s.add_argument("rest", nargs="*")
    s = sub.add_parser("alltoall", help="RC between every ordered pair of hosts, SIZE each "
                       "way per connection, checked by SHA-256")
    s.add_argument("--name", default="lab")
    s.add_argument("--size", default="1M", help="bytes each way per connection (K/M suffix)")
    s.add_argument("--json", action="store_true")
    return p


def main(argv: list[str]) -> int:
    if argv[:1] == ["exec"]:
        return cmd_exec(argv[1:])
    args = parser().parse_args(argv)
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "list": cmd_list,
                "alltoall": cmd_alltoall}[args.cmd](args)
    except LabError as exc:
        print(f"rnic lab {args.cmd}: {exc}", file=sys.stderr)
        return 1


def cmd_up(args) -> int:
    lab = Lab(args.n, args.name, subnet=args.subnet, mtu=args.mtu, fault=args.fault,
              delay=args.delay, rate=args.rate, loopback=args.loopback,
              log_level=args.log_level).up()
    if args.json:
        print(json.dumps(lab.status()))
        return 0
    print(f"lab {lab.name}: {len(lab.hosts)} hosts ({lab.state['mode']}, "
          f"{lab.state['subnet']}) up in {lab.state['up_s']:.1f} s; run dir {lab.run_dir}")
    for h in lab.hosts:
        print(f"  {h.name:<5} {h.ip:<15} pid {h.pid:<7} {h.netns or ''}"
              + (f"  fault {h.fault}" if h.fault else ""))
    print(f"  rnic lab exec{_name_opt(lab.name)} h1 -- PROGRAM ...;  rnic lab "
          f"down{_name_opt(lab.name)}")
    return 0


def _name_opt(name: str) -> str:
    return "" if name == "lab" else f" --name {name}"


def cmd_down(args) -> int:
    had = load_state(args.name) is not None
    gone = clear(args.name)
    if not had and not gone["daemons"] and not gone["namespaces"]:
        print(f"rnic lab down: no lab {args.name!r} (nothing left to remove)")
        return 0
    print(f"lab {args.name}: down ({len(gone['daemons'])} daemons stopped, "
          f"{len(gone['namespaces'])} namespaces removed)")
    return 0


COLUMNS = ("sent_pkts", "rcvd_pkts", "retransmitted_pkts", "fault_drop")


def cmd_status(args) -> int:
    st = Lab.attach(args.name).status()
    if args.json:
        print(json.dumps(st))
        return 0
    print(f"lab {st['name']}: {st['mode']}, {st['subnet']}, {st['state']}, {st['run_dir']}")
    print(f"{'host':<5} {'ip':<15} {'pid':>7} {'alive':<5} {'qps':>4} "
          + " ".join(f"{c:>{max(len(c), 9)}}" for c in COLUMNS) + f" {'cpu_s':>7} {'rss_MiB':>7}")
    for h in st["hosts"]:
        c, o = h.get("counters", {}), h.get("objects", {})
        rss = f"{h['rss_kib'] / 1024:.1f}" if h["rss_kib"] else "-"
        cpu = f"{h['cpu_s']:.2f}" if h["cpu_s"] is not None else "-"
        print(f"{h['name']:<5} {h['ip']:<15} {h['pid'] or '-':>7} "
              f"{'yes' if h['alive'] else 'NO':<5} {o.get('qps', '-'):>4} "
              + " ".join(f"{c.get(k, 0) if h['serving'] else '-':>{max(len(k), 9)}}"
                         for k in COLUMNS) + f" {cpu:>7} {rss:>7}"
              + (f"  fault {h['fault']}" if h["fault"] else ""))
    return 0 if all(h["alive"] and h["serving"] for h in st["hosts"]) else 1


def cmd_list(args) -> int:
    for name in list_labs():
        st = load_state(name) or {}
        print(f"{name:<16} {st.get('mode', '?'):<8} {len(st.get('hosts', [])):>4} hosts  "
              f"{st.get('subnet', '?'):<18} {st.get('state', '?')}")
    if not list_labs():
        print(f"no labs in {run_root()}")
    return 0


def cmd_alltoall(args) -> int:
    from .traffic import all_to_all, parse_size
    lab = Lab.attach(args.name)
    r = all_to_all(lab.hosts, parse_size(args.size))
    print(json.dumps(r) if args.json else
          f"{r['connections']} RC connections, {r['bytes'] / 2**20:.0f} MiB verified by "
          f"SHA-256 in {r['seconds']:.1f} s ({r['MBps']:.0f} MB/s); {r['mismatches']} "
          f"mismatches, {r['errors']} errors")
    return 0 if r["ok"] else 1


def _split_exec(argv: list[str]):
    name, i = "lab", 0
    while i < len(argv) and argv[i].startswith("--") and argv[i] != "--":
        if argv[i] == "--name" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
        elif argv[i].startswith("--name="):
            name, i = argv[i].split("=", 1)[1], i + 1
        else:
            return None
    if i >= len(argv):
        return None
    which, rest = argv[i], argv[i + 1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return (name, which, rest) if rest else None


def cmd_exec(argv: list[str]) -> int:
    """One host: exec (exit status and signals are the program's own). all: every host at
    once, each output line prefixed with the host's name; nonzero if any failed."""
    from rnic import clib
    split = _split_exec(argv)
    if split is None:
        print(f"usage: {USAGE_EXEC}", file=sys.stderr)
        return 2
    name, which, cmd = split
    try:
        lab = Lab.attach(name)
        hosts = lab.hosts if which == "all" else [lab.host(which)]
    except LabError as exc:
        print(f"rnic lab exec: {exc}", file=sys.stderr)
        return 1
    if clib.missing():
        print(f"rnic lab exec: note: {', '.join(clib.missing())} not built in {clib.libdir()}"
              " (make clib): only rnic's own tools will see the host's device", file=sys.stderr)
    if which != "all":
        h = hosts[0]
        full = h.argv(*cmd)
        try:
            os.execvpe(full[0], full, h.env(clib=True))
        except OSError as exc:
            print(f"rnic lab exec: cannot run {full[0]}: {exc.strerror or exc}", file=sys.stderr)
            return 127
    return _exec_all(hosts, cmd)


def _exec_all(hosts, cmd) -> int:
    lock = threading.Lock()
    width = max(len(h.name) for h in hosts)

    def pump(h, p):
        for line in p.stdout:
            with lock:
                sys.stdout.write(f"{h.name:<{width}}: {line.decode(errors='replace')}")
                if not line.endswith(b"\n"):
                    sys.stdout.write("\n")
                sys.stdout.flush()

    procs, threads = [], []
    try:
        for h in hosts:
            try:
                p = h.exec_popen(*cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            except OSError as exc:
                print(f"{h.name}: cannot run {cmd[0]}: {exc.strerror or exc}", file=sys.stderr)
                procs.append((h, None))
                continue
            procs.append((h, p))
            t = threading.Thread(target=pump, args=(h, p), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        rcs = {h.name: (p.wait() if p else 127) for h, p in procs}
    except KeyboardInterrupt:
        for _h, p in procs:
            if p and p.poll() is None:
                p.terminate()
        time.sleep(0.2)
        return 130
    failed = {k: v for k, v in rcs.items() if v}
    if failed:
        print("rnic lab exec: failed on " + ", ".join(f"{k} (exit {v})"
                                                      for k, v in failed.items()),
              file=sys.stderr)
        return next(iter(failed.values())) & 0xFF or 1
    return 0

#!/usr/bin/env python3
"""`rnic lab` at scale: time of `rnic lab up N`, idle CPU of the N daemons (utime + stime over
5 s from /proc, and their wake-ups), RSS per host, an all-to-all RC run (N·(N-1) connections,
SIZE each way per connection, SHA-256 checked; rnic.lab.traffic) and `rnic lab down` time.
Namespace mode when the machine allows it, else --loopback. `make bench` runs it as the `lab`
group; alone: .venv/bin/python bench/lab_scale.py --hosts 64 [--json]."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

NAME = "bench-scale"


def log(*a):
    print("[bench lab]", *a, file=sys.stderr, flush=True)


def _rnic_lab(*args, timeout=600):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "rnic.tool", "lab", *args], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"rnic lab {' '.join(args)}: {r.stderr.strip()[-800:]}")
    return time.monotonic() - t0, r


def _switches(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return sum(int(ln.split()[1]) for ln in f if "ctxt_switches" in ln)
    except OSError:
        return 0


def run(hosts: int = 64, size: int = 1 << 20, idle_s: float = 5.0, alltoall: bool = True,
        window: int | None = None) -> dict:
    from rnic.lab import Lab
    from rnic.lab.daemons import proc_stats
    from rnic.lab.net import missing
    from rnic.lab.traffic import all_to_all
    mode_args = ["--loopback"] if missing() else []
    out = {"hosts": hosts, "mode": "loopback" if mode_args else "netns",
           "why_loopback": missing(), "nproc": os.cpu_count()}
    _rnic_lab("down", "--name", NAME)
    try:
        out["up_s"], _ = _rnic_lab("up", str(hosts), "--name", NAME, "--log-level", "warning",
                                   *mode_args)
        lab = Lab.attach(NAME)
        out["up_network_s"] = lab.state.get("network_s")
        log(f"up {hosts} hosts ({out['mode']}): {out['up_s']:.1f} s")
        pids = [h.pid for h in lab.hosts]
        time.sleep(1.0)                                 # start-up settled
        c0 = sum(proc_stats(p)["cpu_s"] for p in pids)
        w0 = sum(_switches(p) for p in pids)
        time.sleep(idle_s)
        c1 = sum(proc_stats(p)["cpu_s"] for p in pids)
        w1 = sum(_switches(p) for p in pids)
        out["idle"] = {"seconds": idle_s, "cpu_s_all_daemons": round(c1 - c0, 3),
                       "cpu_percent_all_daemons": round(100 * (c1 - c0) / idle_s, 2),
                       "wakeups_per_s_all_daemons": round((w1 - w0) / idle_s, 1)}
        rss = [proc_stats(p)["rss_kib"] for p in pids]
        out["rss_mib_per_host"] = {"median": round(statistics.median(rss) / 1024, 1),
                                   "max": round(max(rss) / 1024, 1),
                                   "total": round(sum(rss) / 1024, 1)}
        log(f"idle: {out['idle']}; RSS per host {out['rss_mib_per_host']}")
        if alltoall:
            t0 = time.monotonic()
            try:
                r = all_to_all(lab.hosts, size, window=window, progress=lambda d, t: log(
                    f"all-to-all {d}/{t} connections, {time.monotonic() - t0:.0f} s"))
                r.pop("error_examples", None) if r["ok"] else None
                out["alltoall"] = r
            except Exception as exc:                    # measured as far as it got
                out["alltoall"] = {"error": repr(exc)[-500:]}
            log(f"all-to-all: {out['alltoall']}")
            st = lab.status()
            tot = {}
            for h in st["hosts"]:
                for k, v in h.get("counters", {}).items():
                    tot[k] = tot.get(k, 0) + v
            out["counters_after"] = {k: tot[k] for k in (
                "sent_pkts", "rcvd_pkts", "retransmitted_pkts", "timeout_retries",
                "retry_exceeded_err", "tx_dropped_busy") if k in tot}
            out["busy_cpu_s_all_daemons"] = round(
                sum(proc_stats(p)["cpu_s"] for p in pids) - c1, 1)
    finally:
        out["down_s"], _ = _rnic_lab("down", "--name", NAME)
        log(f"down: {out['down_s']:.1f} s")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--size", type=int, default=1 << 20, help="bytes each way per connection")
    ap.add_argument("--window", type=int, help="round-robin rounds in flight at once")
    ap.add_argument("--no-alltoall", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run(a.hosts, a.size, alltoall=not a.no_alltoall, window=a.window)
    print(json.dumps(r, indent=None if a.json else 1))
    return 0 if r.get("alltoall", {}).get("ok", a.no_alltoall) else 1


if __name__ == "__main__":
    sys.exit(main())

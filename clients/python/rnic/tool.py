"""`rnic`: talk to a running rnicd (devinfo, stat, qp, engine, fault, perf, ping), like ibv_devinfo,
rdma-statistic, perftest and rping; `rnic lab` makes many hosts (rnic.lab)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from rnicd.wire.abi import MTU, PortState, mtu_bytes

PORT_STATE = {s.value: s.name.removeprefix("IBV_PORT_") for s in PortState}
MTU_BYTES = {m.value: mtu_bytes(m) for m in MTU}


def _context(args):
    from rnic.device import Context
    return Context(name=args.device, socket=args.socket)


def cmd_devinfo(args) -> int:
    with _context(args) as ctx:
        d = ctx.query_device()
        p = ctx.query_port(1)
        gid = ctx.query_gid(1, 0)
    guid = f"{d.node_guid:016x}"
    guid = ":".join(guid[i:i + 4] for i in range(0, 16, 4))
    print(f"hca_id:\t{d.name}")
    print("\ttransport:\t\t\tInfiniBand (0)")
    print(f"\tfw_ver:\t\t\t\t{d.fw_ver}")
    print(f"\tnode_guid:\t\t\t{guid}")
    print(f"\tsys_image_guid:\t\t\t{guid}")
    print(f"\tvendor_id:\t\t\t{d.vendor_id:#06x}")
    print(f"\tvendor_part_id:\t\t\t{d.vendor_part_id}")
    print(f"\thw_ver:\t\t\t\t{d.hw_ver:#x}")
    print(f"\tphys_port_cnt:\t\t\t{d.phys_port_cnt}")
    if args.verbose:
        for key in ("max_mr_size", "max_qp", "max_qp_wr", "max_sge", "max_cq", "max_cqe",
                    "max_mr", "max_pd", "max_qp_rd_atom", "max_qp_init_rd_atom",
                    "atomic_cap", "max_srq", "max_srq_wr", "max_srq_sge"):
            print(f"\t{key}:{' ' * max(1, 24 - len(key))}\t{getattr(d, key)}")
    print("\t\tport:\t1")
    print(f"\t\t\tstate:\t\t\tPORT_{PORT_STATE.get(p.state, p.state)} ({p.state})")
    print(f"\t\t\tmax_mtu:\t\t{MTU_BYTES.get(p.max_mtu, '?')} ({p.max_mtu})")
    print(f"\t\t\tactive_mtu:\t\t{MTU_BYTES.get(p.active_mtu, '?')} ({p.active_mtu})")
    print("\t\t\tsm_lid:\t\t\t0\n\t\t\tport_lid:\t\t0\n\t\t\tport_lmc:\t\t0x00")
    print("\t\t\tlink_layer:\t\tEthernet")
    print(f"\t\t\tGID[  0]:\t\t{gid.gid}, RoCE v2")
    return 0


def cmd_stat(args) -> int:
    with _context(args) as ctx:
        counters = ctx.get_counters(qp=None)
        objects = ctx.get_objects()
    if args.json:
        print(json.dumps({"counters": counters, "objects": objects}))
        return 0
    width = max((len(k) for k in counters), default=10)
    for k, v in sorted(counters.items()):
        print(f"{k:<{width}}  {v}")
    print("objects: " + " ".join(f"{k}={v}" for k, v in objects.items()))
    return 0


QP_TYPES = {2: "RC", 3: "UC", 4: "UD"}
QP_STATES = {0: "RESET", 1: "INIT", 2: "RTR", 3: "RTS", 4: "SQD", 5: "SQE", 6: "ERR"}


def cmd_qp(args) -> int:
    with _context(args) as ctx:
        rows = ctx._call("get_qps", {})[0]["qps"]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'QPN':>6} {'type':<4} {'state':<5} {'sq_psn':>8} {'una':>8} {'rq_psn':>8} "
          f"{'peer':<22} {'pid':>7} {'cwnd':>6} {'srtt_us':>8}")
    for r in rows:
        def psn(v):
            return "-" if v is None else f"{v:#x}"
        print(f"{r['qp_num']:>6} {QP_TYPES.get(r['qp_type'], r['qp_type']):<4} "
              f"{QP_STATES.get(r['state'], r['state']):<5} {psn(r['sq_psn']):>8} "
              f"{psn(r['una']):>8} {psn(r['rq_psn']):>8} {r['peer'] or '-':<22} "
              f"{r['pid'] or '-':>7} {r.get('cwnd') or '-':>6} {r.get('srtt_us') or '-':>8}")
    return 0


def cmd_engine(args) -> int:
    if args.action == "restart":
        which = None if args.target in (None, "all") else int(args.target)
        with _context(args) as ctx:
            done = ctx._call("restart_engine", {"id": which})[0]["restarted"]
        print("restarted: " + (" ".join(map(str, done)) or "none"))
        return 0
    with _context(args) as ctx:
        rows = ctx._call("get_engines", {})[0]["engines"]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no engines: the daemon's own loop runs the data plane (rnicd --engines 0)")
        return 0
    print(f"{'id':>3} {'pid':>7} {'cpu':>4} {'state':<8} {'qps':>5} {'cqs':>5} "
          f"{'restarts':>8} {'rx_pkts':>12} {'tx_pkts':>12} {'slow':>9} {'busy%':>6}")
    for r in rows:
        print(f"{r['id']:>3} {r['pid']:>7} {r['cpu']:>4} {r['state']:<8} {r['qps']:>5} "
              f"{r['cqs']:>5} {r['restarts']:>8} {r['rx_pkts']:>12} {r['tx_pkts']:>12} "
              f"{r['slow_pkts']:>9} {r['busy_pct']:>6}")
    return 0


def cmd_fault(args) -> int:
    from rnicd.core.fault import FaultSpec
    with _context(args) as ctx:
        if args.spec is None:
            spec = ctx.get_fault()
        else:
            try:
                parsed = FaultSpec.parse("" if args.spec == "off" else args.spec)
            except ValueError as exc:
                print(f"rnic fault: {exc}", file=sys.stderr)
                return 2
            spec = ctx.set_fault(**parsed.to_dict())
    print(" ".join(f"{k}={v}" for k, v in spec.items()))
    return 0


def cmd_perf(args) -> int:
    from rnic.perf import run
    return run(args, args.socket, args.device)


def cmd_ping(args) -> int:
    from rnic.ping import run
    return run(args, _context)


class _Intermixed(argparse.ArgumentParser):
    """A subcommand's parser that takes positionals after options, as perftest's users type
    them (`rnic perf write_bw -s 65536 HOST`), not only before them."""
    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:              # parse_known_intermixed_args calls back into this
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnic", description="Inspect and control a running rnicd.")
    p.add_argument("--socket", "-S", help="control socket (default: as rnicd resolves it, "
                   "starting with $RNIC_SOCKET)")
    p.add_argument("--device", "-d", help="device name (default: the daemon's)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Intermixed)
    s = sub.add_parser("devinfo", help="print the device like ibv_devinfo")
    s.add_argument("-v", "--verbose", action="store_true", help="also print device limits")
    s.set_defaults(func=cmd_devinfo)
    s = sub.add_parser("stat", help="print device counters and object counts")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(func=cmd_stat)
    s = sub.add_parser("qp", help="the device's QPs: number, type, state, PSNs, peer",
                       description="Every QP of the device, whichever client owns it: next "
                       "send PSN, oldest unacknowledged PSN (una), expected receive PSN, "
                       "the peer (address/QPN) and the owning process.")
    s.add_argument("--json", action="store_true", help="one JSON array")
    s.set_defaults(func=cmd_qp)
    s = sub.add_parser("engine", help="the engines: pid, CPU, state, QPs, CQs, packets",
                       description="The daemon's engine processes (docs/engines.md): id, "
                       "pid, the CPU each is pinned to, state, the QPs and CQs it serves, "
                       "restarts, packets received and sent, datagrams handed to the "
                       "daemon's slow path, and busy %% (time not asleep) since start. "
                       "`rnic engine restart [ID|all]` replaces engines with fresh processes "
                       "one by one (the QPs go on).")
    s.add_argument("action", nargs="?", choices=["restart"], help="restart engines")
    s.add_argument("target", nargs="?", help="the engine to restart: an id or all (default)")
    s.add_argument("--json", action="store_true", help="one JSON array of objects")
    s.set_defaults(func=cmd_engine)
    s = sub.add_parser("perf", help="perftest for rnicd: bandwidth and latency",
                       description="Client/server like perftest: without HOST it waits for "
                       "one client; with HOST it connects and measures; --local runs both.")
    from rnic.perf import add_arguments
    add_arguments(s)
    s.set_defaults(func=cmd_perf)
    from rnic import ping
    s = sub.add_parser("ping", help="rping: connect over rdma_cm and verify RDMA READ/WRITE",
                       description=ping.DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ping.add_arguments(s)
    s.set_defaults(func=cmd_ping)
    s = sub.add_parser("fault", help="show or set fault injection",
                       description="With no SPEC, print the faults in force. SPEC is "
                       "'drop=0.05,dup=0.01,reorder=0.02,delay=0.01,corrupt=0.001,seed=7' "
                       "(rates 0..1; delay_ms, reorder_ms set the delays) or 'off'.")
    s.add_argument("spec", nargs="?", help="fault spec, or 'off'")
    s.set_defaults(func=cmd_fault)
    s = sub.add_parser("libdir", help="print the directory of rnicd's libibverbs.so.1 (for "
                       "LD_LIBRARY_PATH)")
    s.set_defaults(func=cmd_libdir)
    s = sub.add_parser("exec", help="run an unmodified RDMA program on rnicd: "
                       "rnic exec [--socket S] -- PROGRAM [ARGS...]",
                       description="Runs PROGRAM with LD_LIBRARY_PATH starting with `rnic "
                       "libdir` (rnicd's libibverbs.so.1) and RNIC_SOCKET set to the daemon's "
                       "socket.")
    s.add_argument("command", nargs="*", help="PROGRAM [ARGS...] (after --)")
    s.set_defaults(func=cmd_exec)
    sub.add_parser("lab", help="a virtual RDMA cluster: rnic lab up N | exec hK -- CMD | "
                   "status | down (rnic lab -h)", add_help=False)
    return p


def cmd_libdir(args) -> int:
    from rnic import clib
    print(clib.libdir())
    if clib.missing():
        print(f"rnic libdir: {', '.join(clib.missing())} not built there (`make clib` in "
              "the source tree; needs libibverbs-dev and libmsgpack-dev)", file=sys.stderr)
        return 1
    return 0


def _split_exec(argv: list[str]):
    """`exec [--socket S | -S S | --socket=S] [--] PROGRAM ARGS...`: (socket, command). The
    program's own options are never parsed here."""
    sock, i = None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in ("--socket", "-S") and i + 1 < len(argv):
            sock, i = argv[i + 1], i + 2
        elif a.startswith("--socket="):
            sock, i = a.split("=", 1)[1], i + 1
        else:
            break
    return sock, argv[i:]


def _subcommand_index(argv: list[str]):
    """Index of the subcommand in argv (after the global options), or None."""
    i = 0
    while i < len(argv):
        if argv[i] in ("--socket", "-S", "--device", "-d"):
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i
    return None


def cmd_exec(args) -> int:
    from rnic import clib
    from rnic._conn import socket_path
    if not args.command:
        print("rnic exec: no program given: rnic exec [--socket S] -- PROGRAM [ARGS...]",
              file=sys.stderr)
        return 2
    if clib.missing():
        print(f"rnic exec: {', '.join(clib.missing())} is not built in {clib.libdir()} "
              "(`make clib`; needs libibverbs-dev and libmsgpack-dev)", file=sys.stderr)
        return 1
    env = clib.exec_env(socket_path(args.socket))
    try:
        os.execvpe(args.command[0], args.command, env)
    except OSError as exc:
        print(f"rnic exec: cannot run {args.command[0]}: {exc.strerror or exc}",
              file=sys.stderr)
        return 127


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    k = _subcommand_index(argv)
    if k is not None and argv[k] == "lab":    # its own parser: `lab exec` passes PROGRAM on
        from rnic.lab.cli import main as lab_main
        return lab_main(argv[k + 1:])
    if k is not None and argv[k] == "exec":   # PROGRAM's options are its own: split first
        sock, command = _split_exec(argv[k + 1:])
        args = parser().parse_args(argv[:k + 1])
        args.command = command
        args.socket = sock or args.socket
        return args.func(args)
    args = parser().parse_args(argv)
    from rnic.errors import RnicError
    try:
        return args.func(args)
    except RnicError as exc:
        print(f"rnic {args.cmd}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

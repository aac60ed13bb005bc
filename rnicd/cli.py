"""`rnicd`: run the daemon."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from rnicd.config import Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="rnicd", description="Software RDMA NIC: emulates an RNIC (RoCEv2 over UDP) "
        "and serves verbs to clients over a Unix socket.")
    p.add_argument("--config", "-c", help="TOML configuration file")
    p.add_argument("--device", help="device name (default rnic0)")
    p.add_argument("--bind", help="IPv4 address for RoCEv2 traffic (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="UDP port (default 4791)")
    p.add_argument("--ctl-socket", help="control socket path (default: $RNIC_SOCKET, "
                   "$XDG_RUNTIME_DIR/rnicd/rnicd.sock, /run/rnicd/rnicd.sock)")
    p.add_argument("--fault", help="fault injection, e.g. drop=0.05,reorder=0.02,dup=0.01,seed=7")
    p.add_argument("--engines", help="engine processes running the data plane: a number, "
                   "'auto' (default: one per CPU the daemon may run on) or 0 (none: the "
                   "daemon's own loop runs it)")
    p.add_argument("--engine-spin-us", type=float, help="how long an engine keeps polling "
                   "after its last work before it sleeps (default 50)")
    p.add_argument("--udp-gso", choices=["on", "off"], help="engines send runs of equal-size "
                   "datagrams with UDP GSO and receive with GRO (default on; a capture on "
                   "the host then shows each run as one datagram)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = Config.load(args.config, device=args.device, bind=args.bind, port=args.port,
                          ctl_socket=args.ctl_socket, fault=args.fault, log_level=args.log_level,
                          engines=args.engines, engine_spin_us=args.engine_spin_us,
                          udp_gso=args.udp_gso)
    except (OSError, ValueError) as exc:
        print(f"rnicd: bad configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from rnicd.daemon import Daemon

    async def run():
        await Daemon(cfg, asyncio.get_running_loop()).serve()

    try:
        uvloop.run(run())
    except OSError as exc:
        print(f"rnicd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

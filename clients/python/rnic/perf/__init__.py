"""`rnic perf`: perftest for rnicd.

    rnic perf write_bw                 # server: waits for one client on the TCP port
    rnic perf write_bw HOST            # client: connects, exchanges QP info, measures
    rnic perf write_bw --local --server-socket /tmp/b.sock   # both ends, two daemons

Tests: write_bw read_bw send_bw atomic_bw write_lat read_lat send_lat atomic_lat. Output
columns as perftest's; --json prints one object per message size. MB is 10^6 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

from rnic.errors import RnicError

from .endpoint import MTU_ENUM, Endpoint, Link, Params, handshake_client, handshake_server
from .report import print_footer, print_header, print_result
from .run import client_bw, client_lat, server_lat, server_send_bw

TESTS = ("write_bw", "read_bw", "send_bw", "atomic_bw",
         "write_lat", "read_lat", "send_lat", "atomic_lat")
ALL_SIZES = [2 << i for i in range(23)]          # -a: 2 B .. 8 MiB, as perftest
DEFAULT_PORT = 18515                             # perftest's


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("test", choices=TESTS, help="what to measure")
    p.add_argument("host", nargs="?", help="server to connect to (omit to be the server)")
    p.add_argument("-s", "--size", type=_positive, help="message size in bytes "
                   "(default 65536 for _bw, 2 for _lat; atomics are always 8)")
    p.add_argument("-n", "--iters", type=_positive, help="iterations per QP "
                   "(default 5000 for _bw, 1000 for _lat)")
    p.add_argument("-D", "--duration", type=float, default=0.0,
                   help="run for this many seconds instead of a number of iterations")
    p.add_argument("-a", "--all", action="store_true", help="every size from 2 B to 8 MiB")
    p.add_argument("-q", "--qps", type=_positive, default=1, help="QPs (bandwidth tests)")
    p.add_argument("-t", "--tx-depth", type=_positive, help="WRs in flight per QP "
                   "(default 128 for _bw, 1 for _lat)")
    p.add_argument("-l", "--post-list", type=_positive, default=1,
                   help="WRs per post_send call (one signaled completion per list)")
    p.add_argument("-Q", "--cq-mod", type=_positive,
                   help="bandwidth tests: a completion every this many WRs (as perftest: "
                        "default 100, or the post list's length with -l; at most --tx-depth)")
    p.add_argument("-I", "--inline-size", type=int, default=0,
                   help="send messages up to this size inline (max 512)")
    p.add_argument("-m", "--mtu", type=int, default=0, choices=sorted(MTU_ENUM),
                   help="path MTU (default: the ports' active MTU; never more than it)")
    p.add_argument("--event", action="store_true",
                   help="sleep on completion events instead of polling")
    p.add_argument("-d", "--device", default=argparse.SUPPRESS,
                   help="device name (as `rnic -d`; default: the daemon's)")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port of the out-of-band exchange (default {DEFAULT_PORT})")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line and message size, nothing else")
    p.add_argument("--local", action="store_true",
                   help="run the server too, in a child process, on --server-socket")
    p.add_argument("--server-socket", help="--local: the server side's daemon "
                   "(default: the same daemon as the client)")
    p.add_argument("--samples", help="latency tests: write every one-way sample (us) here")
    p.add_argument("--spread", action="store_true", help="bandwidth tests: a CQ per QP, "
                   "QP q on completion vector q mod num_comp_vectors (one engine each)")


def _positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return v


def params_from(args) -> Params:
    bw = args.test.endswith("_bw")
    if args.qps > 1 and not bw:
        raise ValueError("latency tests use one QP (-q is for bandwidth tests)")
    if args.inline_size < 0 or args.inline_size > 512:
        raise ValueError("--inline-size must be between 0 and 512")
    if args.duration < 0:
        raise ValueError("--duration must not be negative")
    if args.all and args.size:
        raise ValueError("-a and -s exclude each other")
    sizes = ALL_SIZES if args.all else [args.size or (65536 if bw else 2)]
    if args.test.startswith("atomic"):
        sizes = [8]
    if args.test == "write_lat" and min(sizes) < 1:
        raise ValueError("write_lat needs at least 1 byte")
    if args.spread and (not bw or args.event):
        raise ValueError("--spread is for bandwidth tests, without --event")
    tx = args.tx_depth or (128 if bw else 1)
    if args.post_list > tx:
        raise ValueError(f"--post-list {args.post_list} exceeds --tx-depth {tx}")
    return Params(test=args.test, sizes=sizes, iters=args.iters or (5000 if bw else 1000),
                  duration=args.duration, qps=args.qps, tx_depth=tx,
                  post_list=args.post_list, inline=args.inline_size, mtu=args.mtu,
                  cq_mod=args.cq_mod or (args.post_list if args.post_list > 1 else 100),
                  event=args.event, spread=args.spread)


def run(args, socket_path: str | None, device: str | None) -> int:
    try:
        if args.host is None and not args.local:
            return serve(args.port, socket_path, device)
        p = params_from(args)
    except (ValueError, OSError) as exc:
        print(f"rnic perf: {exc}", file=sys.stderr)
        return 2
    server = None
    host, port = args.host or "127.0.0.1", args.port
    if args.local:
        port = _free_port()
        cmd = [sys.executable, "-m", "rnic.tool", "--socket",
               args.server_socket or socket_path or "", "perf", args.test, "-p", str(port)]
        if device:
            cmd[3:3] = ["--device", device]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        return client(p, host, port, socket_path, device, args)
    except (RnicError, ConnectionError, OSError, RuntimeError) as exc:
        print(f"rnic perf: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def client(p: Params, host, port, socket_path, device, args) -> int:
    ep = Endpoint(socket_path, device, p)
    link = Link.connect(host, port)
    samples_out = open(args.samples, "w") if args.samples else None
    try:
        handshake_client(link, ep)
        if not args.json:
            print_header(p)
        for size in p.sizes:
            link.send({"size": size})
            link.recv()                                   # the server is ready
            if p.is_bw:
                result = client_bw(ep, size, progress=not args.json)
                if p.verb == "send":
                    link.send({"sent": result["iterations"]})
            else:
                result, samples = client_lat(ep, size, progress=not args.json)
                if samples_out:
                    factor = 1 if p.verb in ("read", "atomic") else 2
                    samples_out.writelines(f"{s * 1e6 / factor:.3f}\n" for s in samples)
            link.send({"done": True})
            link.recv()
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print_result(p, result)
        link.send({"bye": True})
        if not args.json:
            print_footer()
        return 0
    finally:
        if samples_out:
            samples_out.close()
        link.close()
        ep.close()


def serve(port: int, socket_path, device) -> int:
    """One client, then exit (as perftest's server does)."""
    link = Link.accept(port, timeout=120)
    try:
        ep = handshake_server(link, socket_path, device)
    except (RnicError, ValueError, TypeError, KeyError) as exc:
        print(f"rnic perf: {exc}", file=sys.stderr)
        link.close()
        return 1
    try:
        while True:
            msg = link.recv()
            if "bye" in msg:
                return 0
            size = msg["size"]
            if ep.p.is_bw and ep.p.verb == "send":
                server_send_bw(ep, size, link)
            elif not ep.p.is_bw:
                server_lat(ep, size, link)
            else:
                link.send({"ready": True})
            if "done" not in link.recv():
                raise ConnectionError("protocol error: expected 'done'")
            link.send({"ok": True})
    except (RnicError, ConnectionError, RuntimeError) as exc:
        print(f"rnic perf: {exc}", file=sys.stderr)
        return 1
    finally:
        link.close()
        ep.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rnic perf", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", "-S", default=os.environ.get("RNIC_SOCKET"))
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args, args.socket, getattr(args, "device", None))

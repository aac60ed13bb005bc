"""Engine failover blackout (issue 23): a 64 KiB RDMA WRITE stream runs between two daemons;
every 0.5 s the engine serving the QP (completion vector 0: engine 0) is SIGKILLed, on the
two daemons in turn. The blackout of a kill is the longest gap between consecutive
completions from the last one before the kill to one second after it: kill to traffic
flowing again, as the application sees it. Prints one JSON object.

    python bench/failover.py SOCKET_A SOCKET_B [--kills 10]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))   # rc_pair: the RC setup

import rnic.enums as e  # noqa: E402
from rc_pair import Side, connect  # noqa: E402
from rnic.device import Context  # noqa: E402
from rnic.wr import SGE, SendWR  # noqa: E402

CHUNK, DEPTH = 64 * 1024, 16


def engine0_pid(socket_path: str) -> int:
    with Context(name="rnic0", socket=socket_path) as ctx:
        return ctx._call("get_engines", {})[0]["engines"][0]["pid"]


def stream(a: Side, b: Side, stop: threading.Event, times: list, errors: list) -> None:
    posted = done = 0
    while not stop.is_set() or done < posted:
        while not stop.is_set() and posted - done < DEPTH:
            off = (posted % 64) * CHUNK
            w = SendWR(wr_id=posted, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                       sg=[SGE(a.mr.buf + off, CHUNK, a.mr.lkey)],
                       send_flags=e.IBV_SEND_SIGNALED)
            w.set_wr_rdma(b.mr.rkey, b.mr.buf + off)
            a.qp.post_send(w)
            posted += 1
        n, wcs = a.cq.poll(DEPTH)
        now = time.monotonic()
        for wc in wcs[:n]:
            if wc.status != e.IBV_WC_SUCCESS:
                errors.append(int(wc.status))
            times.append(now)
            done += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sockets", nargs=2)
    ap.add_argument("--kills", type=int, default=10)
    args = ap.parse_args(argv)
    a = Side(SimpleNamespace(socket=args.sockets[0]), mr_size=64 * CHUNK, cqe=256)
    b = Side(SimpleNamespace(socket=args.sockets[1]), mr_size=64 * CHUNK, cqe=256)
    connect(a, b, mtu=e.IBV_MTU_4096, timeout=14)
    stop, times, errors, kills = threading.Event(), [], [], []
    t = threading.Thread(target=stream, args=(a, b, stop, times, errors), daemon=True)
    t.start()
    time.sleep(0.5)
    for k in range(args.kills):
        pid = engine0_pid(args.sockets[k % 2])
        kills.append(time.monotonic())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    time.sleep(0.5)
    stop.set()
    t.join(60)
    blackouts = []
    for tk in kills:
        before = [x for x in times if x < tk]
        window = ([before[-1]] if before else []) + [x for x in times if tk <= x <= tk + 1.0]
        gaps = [y - x for x, y in zip(window, window[1:], strict=False)]
        blackouts.append(round(max(gaps) * 1000, 2) if gaps else None)
    got = [x for x in blackouts if x is not None]
    print(json.dumps({"kills": len(kills), "completions": len(times), "errors": errors,
                      "blackout_ms": blackouts,
                      "median_ms": round(statistics.median(got), 2) if got else None,
                      "max_ms": max(got) if got else None}))
    a.close()
    b.close()
    return 0 if not errors and not t.is_alive() else 1


if __name__ == "__main__":
    sys.exit(main())

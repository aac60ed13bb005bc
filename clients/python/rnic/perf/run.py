"""The measurement loops of `rnic perf`, client and server side, as perftest runs them.

Bandwidth: the client keeps tx_depth WRs in flight on every QP, posting post_list WRs per
post_send and asking for a completion once every cq_mod WRs (perftest's -Q, default 100,
rounded up to whole lists and at most tx_depth), on the last WR of a list: completions are
in order on an RC QP, so one stands for the cq_mod before it. Latency: ping-pong for send
and write (the one-way time is half the round trip), one operation at a time for read and
atomic (perftest reports their whole time).
"""
from __future__ import annotations

import os
import select
import time

import rnic.enums as e
from rnic.errors import RnicError
from rnic.wr import SGE, RecvWR, SendWR

from .endpoint import Endpoint, Link

OPCODE = {"write": e.IBV_WR_RDMA_WRITE, "read": e.IBV_WR_RDMA_READ, "send": e.IBV_WR_SEND,
          "atomic": e.IBV_WR_ATOMIC_FETCH_AND_ADD}
RTT_FACTOR = {"write": 2, "send": 2, "read": 1, "atomic": 1}
SIGNAL_EVERY = 16     # write_lat, send_lat: reap the SQ with one signaled WR in this many


def _send_wr(ep: Endpoint, i: int, size: int, signaled: bool) -> SendWR:
    verb = ep.p.verb
    flags = e.IBV_SEND_SIGNALED if signaled else 0
    if verb in ("write", "send") and size <= ep.p.inline:
        flags |= e.IBV_SEND_INLINE
    wr = SendWR(wr_id=i, opcode=OPCODE[verb], num_sge=1, send_flags=flags,
                sg=[SGE(ep.local(i), size, ep.mr.lkey)])
    if verb in ("write", "read"):
        wr.set_wr_rdma(ep.peer["rkey"], ep.remote(i))
    elif verb == "atomic":
        wr.set_wr_atomic(ep.peer["rkey"], ep.remote(i), 1)
    return wr


class Progress:
    """A line on stderr at most once a second, for runs longer than that (not with --json)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.last = enabled, total, time.perf_counter()

    def update(self, done: int, nbytes: int, t0: float):
        now = time.perf_counter()
        if self.enabled and now - self.last >= 1.0:
            self.last = now
            import sys
            total = f"/{self.total}" if self.total else ""
            print(f"\r  {done}{total} iterations, {nbytes / (now - t0) / 1e6:.1f} MB/sec",
                  end="", file=sys.stderr, flush=True)


def client_bw(ep: Endpoint, size: int, progress: bool) -> dict:
    p = ep.p
    size = 8 if p.verb == "atomic" else size
    lst = max(1, p.post_list)
    depth = max(lst, p.tx_depth - p.tx_depth % lst)
    period = min(depth, -(-max(1, p.cq_mod) // lst) * lst)     # WRs per completion
    per_qp = -(-p.iters // period) * period if not p.duration else 1 << 62
    lists = [[[_send_wr(ep, q, size, signaled and k == lst - 1) for k in range(lst)]
              for signaled in (False, True)] for q in range(p.qps)]
    posted, inflight = [0] * p.qps, [0] * p.qps
    completed, marks = 0, []
    bar = Progress(progress, 0 if p.duration else per_qp * p.qps)
    t0 = time.perf_counter()
    stop_posting = t0 + p.duration if p.duration else None
    while True:
        now = time.perf_counter()
        posting = stop_posting is None or now < stop_posting
        for q, qp in enumerate(ep.qps):
            # past the deadline, only up to the next signaled WR (so that everything drains)
            while ((posting or posted[q] % period) and posted[q] < per_qp
                   and inflight[q] + lst <= depth):
                posted[q] += lst
                qp.post_send(lists[q][posted[q] % period == 0])
                inflight[q] += lst
        if not any(inflight):
            break
        for wc in ep.poll():
            inflight[ep.index[wc.qp_num]] -= period
            completed += period
        marks.append((time.perf_counter(), completed))
        bar.update(completed, completed * size, t0)
    elapsed = time.perf_counter() - t0
    return {"test": p.test, "bytes": size, "iterations": completed,
            "bw_peak_MBps": _peak(marks, t0, completed) * size / 1e6,
            "bw_avg_MBps": completed * size / elapsed / 1e6,
            "msg_rate_Mpps": completed / elapsed / 1e6}


def _peak(marks, t0, total) -> float:
    """Messages per second over the fastest stretch of at least 1/20 of the run."""
    window = max(1, total // 20)
    best, j = 0.0, 0
    points = [(t0, 0)] + marks
    for i in range(len(points)):
        j = max(j, i + 1)
        while j < len(points) and points[j][1] - points[i][1] < window:
            j += 1
        if j == len(points):
            break
        dt = points[j][0] - points[i][0]
        if dt > 0:
            best = max(best, (points[j][1] - points[i][1]) / dt)
    return best or (total / max(marks[-1][0] - t0, 1e-9) if marks else 0.0)


def server_send_bw(ep: Endpoint, size: int, link: Link) -> None:
    """Keep every QP's receive queue full until the client says how many it sent."""
    recvs = [RecvWR(wr_id=q, num_sge=1, sg=[SGE(ep.local(q), max(size, 1), ep.mr.lkey)])
             for q in range(ep.p.qps)]
    for q, qp in enumerate(ep.qps):
        for _ in range(ep.p.tx_depth):
            qp.post_recv(recvs[q])
    link.send({"ready": True})
    received, expected = 0, None
    while expected is None or received < expected:
        got, wcs = ep.poll_any(64)
        for wc in wcs:
            if wc.status != e.IBV_WC_SUCCESS:
                raise RuntimeError(f"receive completed with {e.WCStatus(wc.status).name}")
            received += 1
            ep.qps[ep.index[wc.qp_num]].post_recv(recvs[ep.index[wc.qp_num]])
        if expected is None and (not got or received % 256 == 0):
            if select.select([link.sock], [], [], 0)[0]:
                expected = link.recv()["sent"]


def client_lat(ep: Endpoint, size: int, progress: bool) -> tuple[dict, list[float]]:
    p = ep.p
    verb = p.verb
    size = 8 if verb == "atomic" else size
    qp = ep.qps[0]
    samples: list[float] = []
    bar = Progress(progress, 0 if p.duration else p.iters)
    t0 = time.perf_counter()
    deadline = t0 + p.duration if p.duration else None
    recv = RecvWR(wr_id=0, num_sge=1, sg=[SGE(ep.local(0), max(size, 1), ep.mr.lkey)])
    mm, last = ep.mr.mmap, size - 1
    wrs = [_send_wr(ep, 0, size, False), _send_wr(ep, 0, size, True)]   # reused, as perftest
    i = 0
    if verb == "send":
        qp.post_recv(recv)
    while (deadline is None and i < p.iters) or (deadline is not None
                                                 and time.perf_counter() < deadline):
        i += 1
        if verb == "write":
            # The last byte carries a sequence number 1..127; the server answers seq + 128,
            # so neither side ever mistakes its own byte for the other's.
            seq = i % 127 + 1
            mm[last] = seq
            wr = wrs[i % SIGNAL_EVERY == 0]
            t = time.perf_counter()
            qp.post_send(wr)
            while mm[last] != seq + 128:
                os.sched_yield()        # polite polling (docs/engines.md)
            samples.append(time.perf_counter() - t)
            if i % SIGNAL_EVERY == 0:
                ep.poll(1)
        elif verb == "send":
            # The answer's RECV ends the sample; the signaled SENDs' completions (one in
            # SIGNAL_EVERY, as perftest's -Q) are reaped as they come, off the clock's path.
            t = time.perf_counter()
            qp.post_send(wrs[i % SIGNAL_EVERY == 0])
            seen_recv = False
            while not seen_recv:
                for wc in ep.poll(2):
                    seen_recv |= wc.opcode == e.IBV_WC_RECV
            samples.append(time.perf_counter() - t)
            qp.post_recv(recv)
        else:
            t = time.perf_counter()
            qp.post_send(wrs[1])
            ep.poll(1)
            samples.append(time.perf_counter() - t)
        bar.update(i, i * size, t0)
    return _lat_result(p.test, size, samples, RTT_FACTOR[verb]), samples


def server_lat(ep: Endpoint, size: int, link: Link) -> None:
    """The echo side of send_lat and write_lat; read and atomic need nothing from it."""
    verb, qp = ep.p.verb, ep.qps[0]
    recv = RecvWR(wr_id=0, num_sge=1, sg=[SGE(ep.local(0), max(size, 1), ep.mr.lkey)])
    if verb == "send":
        for _ in range(2):
            qp.post_recv(recv)
    link.send({"ready": True})
    mm, last, i, idle = ep.mr.mmap, size - 1, 0, 0
    wrs = [_send_wr(ep, 0, size, False), _send_wr(ep, 0, size, True)]
    while True:
        if verb == "write":
            seq = (i + 1) % 127 + 1
            spins = 0
            while mm[last] != seq:
                os.sched_yield()
                spins += 1
                if spins % 4096 == 0 and select.select([link.sock], [], [], 0)[0]:
                    return
            i += 1
            mm[last] = seq + 128
            qp.post_send(wrs[i % SIGNAL_EVERY == 0])
            if i % SIGNAL_EVERY == 0:
                ep.poll(1)
        elif verb == "send":
            # Answer first, re-post the receive after: one spare receive stays posted (two
            # were), so the next ping always finds one.
            got, wcs = ep.cq.poll(4)
            for wc in wcs:
                if wc.status != e.IBV_WC_SUCCESS:
                    raise RnicError(5, f"send_lat server: a completion in error "
                                    f"({e.WCStatus(wc.status).name})")
                if wc.opcode == e.IBV_WC_RECV:
                    i += 1
                    qp.post_send(wrs[i % SIGNAL_EVERY == 0])
                    qp.post_recv(recv)
            # the client's "done" is looked for now and then: a select per empty poll
            # would delay the answer to a ping that lands during it
            if not got:
                idle += 1
                if idle % 256 == 0 and select.select([link.sock], [], [], 0)[0]:
                    return
        else:
            return


def _lat_result(test: str, size: int, samples: list[float], factor: int) -> dict:
    us = sorted(s * 1e6 / factor for s in samples)
    n = len(us)
    if not n:
        raise RuntimeError("no iterations ran (is -D too short?)")
    avg = sum(us) / n
    stdev = (sum((x - avg) ** 2 for x in us) / n) ** 0.5

    def pct(q: float) -> float:
        return us[min(n - 1, int(q * n))]

    return {"test": test, "bytes": size, "iterations": n, "t_min_us": us[0],
            "t_max_us": us[-1], "t_typical_us": us[n // 2], "t_avg_us": avg,
            "t_stdev_us": stdev, "p99_us": pct(0.99), "p999_us": pct(0.999)}

"""Killing engines under traffic, shared by the failover tests on loopback
(tests/integration/test_failover.py) and between network namespaces (tests/netns): engine
rows from `rnic engine --json`, waiting for a substitute, and a mixed WRITE/SEND/READ stream
checked by SHA-256 while a killer SIGKILLs engines at random moments."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.wr import SGE, RecvWR, SendWR

MiB = 1 << 20


def engines(daemon) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "rnic.tool", "--socket", daemon.socket, "engine",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def engine_pid(daemon, k: int) -> int:
    return next(r["pid"] for r in engines(daemon) if r["id"] == k)


def wait_replaced(daemon, k: int, old: int, timeout=10.0) -> float:
    """Seconds until engine k runs under a pid other than old."""
    t0 = time.monotonic()
    while True:
        row = next(r for r in engines(daemon) if r["id"] == k)
        if row["pid"] != old and row["state"] == "running":
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"engine {k} not replaced: {row}"
        time.sleep(0.05)


CHUNK = 64 * 1024
SLOTS = 32                  # landing places per kind, more than the WRs in flight


def mixed_stream(a: Side, b: Side, total: int, depth: int, on_progress) -> tuple[str, str]:
    """RDMA WRITE, SEND and RDMA READ in turn, CHUNK bytes each, depth in flight, on one RC
    QP: WRITEs and SENDs carry a's source (a region's first 16 MiB) to b, READs bring b's
    source to a. Every completion must be a success, the send WRs complete once each and in
    order, b's receives likewise. Returns SHA-256 of the bytes sent and of the bytes that
    landed, each in WR order (a landing place is read as its WR completes)."""
    ops = (e.IBV_WR_RDMA_WRITE, e.IBV_WR_SEND, e.IBV_WR_RDMA_READ)
    src_span = 16 * MiB // CHUNK
    land_w, land_s, land_r = 16 * MiB, 16 * MiB + SLOTS * CHUNK, 16 * MiB
    sent, landed = hashlib.sha256(), hashlib.sha256()
    n = total // CHUNK
    posted, expect, recvs = [], 0, 0

    def complete_one():
        nonlocal expect, recvs
        wc = poll_n(a.cq, 1, timeout=60)[0]
        assert wc.status == e.IBV_WC_SUCCESS and wc.wr_id == expect, (wc.status, wc.wr_id, expect)
        op, off, slot = posted[expect]
        if op == e.IBV_WR_RDMA_WRITE:
            got = b.mr.read(CHUNK, land_w + slot * CHUNK)
        elif op == e.IBV_WR_SEND:
            rwc = poll_n(b.cq, 1, timeout=60)[0]
            assert rwc.status == e.IBV_WC_SUCCESS and rwc.wr_id == recvs, (rwc.wr_id, recvs)
            assert rwc.byte_len == CHUNK
            got = b.mr.read(CHUNK, land_s + (recvs % SLOTS) * CHUNK)
            recvs += 1
        else:
            got = a.mr.read(CHUNK, land_r + slot * CHUNK)
        landed.update(got)
        expect += 1
        on_progress(expect)

    sends = 0
    for i in range(n):
        if i >= depth:
            complete_one()
        op, off, slot = ops[i % 3], (i * 7 % src_span) * CHUNK, i % SLOTS
        posted.append((op, off, slot))
        if op == e.IBV_WR_RDMA_READ:
            sent.update(b.mr.read(CHUNK, off))
            w = SendWR(wr_id=i, opcode=op, num_sge=1,
                       sg=[SGE(a.mr.buf + land_r + slot * CHUNK, CHUNK, a.mr.lkey)],
                       send_flags=e.IBV_SEND_SIGNALED)
            w.set_wr_rdma(b.mr.rkey, b.mr.buf + off)
        else:
            sent.update(a.mr.read(CHUNK, off))
            w = SendWR(wr_id=i, opcode=op, num_sge=1, sg=[SGE(a.mr.buf + off, CHUNK, a.mr.lkey)],
                       send_flags=e.IBV_SEND_SIGNALED)
            if op == e.IBV_WR_RDMA_WRITE:
                w.set_wr_rdma(b.mr.rkey, b.mr.buf + land_w + slot * CHUNK)
            else:
                k = sends % SLOTS
                b.qp.post_recv(RecvWR(wr_id=sends, num_sge=1,
                                      sg=[SGE(b.mr.buf + land_s + k * CHUNK, CHUNK, b.mr.lkey)]))
                sends += 1
        a.qp.post_send(w)
    while expect < n:
        complete_one()
    assert a.cq.poll(1)[0] == 0 and b.cq.poll(1)[0] == 0    # nothing twice
    return sent.hexdigest(), landed.hexdigest()


def killer(daemons, kills: list, every: int, seed: int):
    """on_progress for a stream: after about every `every` completions (at random), SIGKILL
    a random engine of each daemon in turn."""
    rng = random.Random(seed)
    nxt = [rng.randint(every // 2, every)]

    def on_progress(done):
        if done < nxt[0]:
            return
        nxt[0] = done + rng.randint(every // 2, every)
        d = daemons[len(kills) % len(daemons)]
        k = rng.randrange(2)
        pid = engine_pid(d, k)
        os.kill(pid, signal.SIGKILL)
        kills.append((d, k, pid))
    return on_progress


def all_replaced(kills: list, sides: dict) -> None:
    """After a killer's kills: every killed engine has a substitute, every engine of each
    daemon runs, each slot counts its restarts, and each daemon its failovers and deaths
    (sides: daemon -> the Side whose context reads its counters)."""
    for d, k, pid in kills:
        wait_replaced(d, k, pid)
    for d, side in sides.items():
        rows = engines(d)
        mine = [k for dd, k, _ in kills if dd is d]
        assert all(r["state"] == "running" for r in rows)
        assert [r["restarts"] for r in rows] == [mine.count(r["id"]) for r in rows]
        c = side.ctx.get_counters()
        assert c["engine_failovers"] == len(mine) == c["engine_deaths"]


def mixed_stream_under_kills(da, db, mtu, seed: int) -> None:
    """Issue 23's acceptance between daemons (or hosts) da and db: 256 MiB of mixed_stream
    while a killer SIGKILLs random engines of both about every 300 completions (at least 10
    kills); what landed equals what was sent, and all_replaced holds."""
    a, b = Side(da, mr_size=24 * MiB, cqe=512), Side(db, mr_size=24 * MiB, cqe=512)
    try:
        connect(a, b, mtu=mtu, timeout=14, retry_cnt=7)
        a.mr.write(random.Random(seed).randbytes(16 * MiB), 16 * MiB, 0)
        b.mr.write(random.Random(seed + 1).randbytes(16 * MiB), 16 * MiB, 0)
        kills = []
        sent, landed = mixed_stream(a, b, 256 * MiB, 16, killer((da, db), kills, 400, seed))
        assert len(kills) >= 10
        assert landed == sent
        all_replaced(kills, {da: a, db: b})
    finally:
        a.close()
        b.close()


"""Engines (native/src/engine.c, rnicd/io/engines.py, docs/engines.md): C processes that run
the data plane. What is checked here: `rnic engine` and what it reports, per-CPU
completion distribution (seed 000: comp vector k is engine k's, on its own CPU), that
adaptive polling starves nobody on 2 cores, and the RC, fault and error suites again with
one engine. No timing is asserted: speed is `make bench`'s."""
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import rnic.enums as e
from rc_pair import Side, connect_one, poll_n
from rnic.cq import CQ, CompChannel
from rnic.qp import QP, QPCap, QPInitAttr
from rnic.wr import SGE, RecvWR, SendWR

from rnicd.io.engines import engine_cpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rnic(daemon, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "rnic.tool", "--socket", daemon.socket,
                           *args], capture_output=True, text=True, timeout=timeout)


def engines(daemon) -> list[dict]:
    r = rnic(daemon, "engine", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_rnic_engine_lists_pinned_children(rnicd):
    d = rnicd("a", extra=("--engines", "2"))
    rows = engines(d)
    assert [r["id"] for r in rows] == [0, 1]
    for r in rows:
        assert {"id", "pid", "cpu", "state", "qps", "cqs", "restarts"} <= set(r)
        assert r["state"] == "running" and r["restarts"] == 0
        assert os.sched_getaffinity(r["pid"]) == {r["cpu"]}        # pinned
        with open(f"/proc/{r['pid']}/comm") as f:
            assert f.read().strip() == f"rnicd-engine-{r['id']}"
    assert sorted(r["pid"] for r in rows) == sorted(d.engine_pids())
    cpus = engine_cpus(d.ip)          # rotated by the address: daemons spread their engines
    assert [r["cpu"] for r in rows] == [cpus[k % len(cpus)] for k in range(2)]
    assert set(cpus) == os.sched_getaffinity(0)
    table = rnic(d, "engine")
    assert table.returncode == 0 and "restarts" in table.stdout.splitlines()[0]
    none = rnicd("b", extra=("--engines", "0"))
    assert engines(none) == []


def _pair_on_vector(a: Side, b: Side, vector: int):
    """A connected RC QP pair whose CQs (with channels) are on comp vector `vector`."""
    out = []
    for s in (a, b):
        ch = CompChannel(s.ctx)
        cq = CQ(s.ctx, 256, None, ch, vector)
        qp = QP(s.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                 cap=QPCap(max_send_wr=64, max_recv_wr=64)))
        out.append((ch, cq, qp))
    qa, qb = out[0][2], out[1][2]
    connect_one(SimpleNamespace(qp=qa), qb.qp_num, b.gid, 0x10, 0x10)
    connect_one(SimpleNamespace(qp=qb), qa.qp_num, a.gid, 0x10, 0x10)
    return out


def test_comp_vectors_are_served_by_their_own_engines(rnicd):
    """Seed 000, first aspect: with two engines, CQs on vectors 0 and 1 (and their QPs) are
    served by two engine processes on two CPUs: each engine's packet counter moves only
    with its own vector's traffic, and it signals its own CQ's completion channel."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to pin two engines apart")
    da, db = rnicd("a", extra=("--engines", "2")), rnicd("b", extra=("--engines", "2"))
    a, b = Side(da), Side(db)
    try:
        assert a.ctx.num_comp_vectors == 2
        pairs = {v: _pair_on_vector(a, b, v) for v in (0, 1)}
        for v, ((_, _, qa), (_, _, qb)) in pairs.items():
            assert qa.qp_num % 2 == v and qb.qp_num % 2 == v     # steered by QPN
        rows = engines(db)
        assert len({r["cpu"] for r in rows}) == 2 and len({r["pid"] for r in rows}) == 2
        assert [r["qps"] for r in rows] == [2, 1]                # Side's own QP is on 0
        assert [r["cqs"] for r in rows] == [2, 1]
        for v in (1, 0):
            (_, _, qa), (bch, bcq, qb) = pairs[v]
            before = engines(db)
            bcq.req_notify()
            for i in range(50):
                qb.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(b.mr.buf, 256, b.mr.lkey)]))
            for i in range(50):
                qa.post_send(SendWR(wr_id=i, opcode=e.IBV_WR_SEND, num_sge=1,
                                    sg=[SGE(a.mr.buf, 256, a.mr.lkey)],
                                    send_flags=e.IBV_SEND_SIGNALED))
            poll_n(pairs[v][0][1], 50)
            bch.get_cq_event()
            bch.ack_cq_events(bcq, 1)
            poll_n(bcq, 50)
            after = engines(db)
            other = 1 - v
            assert after[v]["fast_pkts"] - before[v]["fast_pkts"] >= 50
            assert after[other]["fast_pkts"] == before[other]["fast_pkts"]
            assert after[v]["channel_events"] == before[v]["channel_events"] + 1
            assert after[other]["channel_events"] == before[other]["channel_events"]
    finally:
        a.close()
        b.close()


def test_a_post_rings_only_its_engines_doorbell(rnicd):
    """A doorbell per engine: hello hands the client one eventfd per engine, a QP's SQ ring
    header names its engine's, and posts write that one only, so they never wake the
    other engine. (Engines watch their doorbell edge-triggered and never read it, so its
    counter shows what the client wrote; reading it here empties it, which they do not
    notice. Without spinning the engines sleep between sends and the flag that lets a
    client skip the doorbell is down.)"""
    spin = ("--engines", "2", "--engine-spin-us", "0")
    da, db = rnicd("a", extra=spin), rnicd("b", extra=spin)
    a, b = Side(da), Side(db)

    def written(fd) -> int:
        try:
            return int.from_bytes(os.read(fd, 8), "little")
        except BlockingIOError:
            return 0

    try:
        fds = a.ctx._doorbell_fds
        assert len(fds) == 2
        pairs = {v: _pair_on_vector(a, b, v) for v in (0, 1)}
        for v in (0, 1):
            (_, acq, qa), (_, bcq, qb) = pairs[v]
            assert qa._sq.hdr.doorbell == v + 1 and qa._rq.hdr.doorbell == v + 1
            for fd in fds:
                written(fd)
            for i in range(20):
                qb.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(b.mr.buf, 64, b.mr.lkey)]))
                qa.post_send(SendWR(wr_id=i, opcode=e.IBV_WR_SEND, num_sge=1,
                                    sg=[SGE(a.mr.buf, 64, a.mr.lkey)],
                                    send_flags=e.IBV_SEND_SIGNALED))
                poll_n(acq, 1)
                poll_n(bcq, 1)
            assert written(fds[1 - v]) == 0
            assert written(fds[v]) >= 1
    finally:
        a.close()
        b.close()


def test_adaptive_polling_starves_nobody(rnicd):
    """Two daemons (engines at the default count), a latency run and a bandwidth run at once,
    each app busy-polling its CQs: on 2 CPUs the engines' spinning must leave them room."""
    da, db = rnicd("a"), rnicd("b")
    cmd = [sys.executable, "-m", "rnic.tool", "--socket", da.socket, "perf"]
    runs = [subprocess.Popen(cmd + ["send_lat", "--local", "--server-socket", db.socket,
                                    "-s", "64", "-n", "3000", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            subprocess.Popen(cmd + ["write_bw", "--local", "--server-socket", db.socket,
                                    "-s", "65536", "-n", "3000", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    for p in runs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        row = json.loads(out.splitlines()[-1])
        assert row["iterations"] == 3000
    assert sum(r["fast_pkts"] for r in engines(db)) > 3000


SUITES = ["tests/integration/test_rc_verbs.py", "tests/integration/test_uc_verbs.py",
          "tests/integration/test_faults.py", "tests/integration/test_errors.py",
          "tests/integration/test_fast_path.py"]


@pytest.mark.parametrize("count", ["1", "0"])
def test_rc_fault_and_error_suites_with_other_engine_counts(count, tmp_path):
    """The RC opcode, fault and error-semantics suites with one engine, and with none (the
    daemon's own loop): the same results as with the default count."""
    env = dict(os.environ, RNIC_TEST_ENGINES=count)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--basetemp", str(tmp_path / "t"), *SUITES], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]


def test_an_engine_takes_the_hint_of_a_poller_on_its_cpu(rnicd):
    """The CQ ring's poller_cpu (native/include/rnic_abi.h), written here as the C library's
    empty poll writes it (test_c_verbs checks that it does): the engine that writes that CQ
    a completion from the CPU it names takes the hint (and yields to the program, counted
    in poller_yields); an engine on another CPU leaves it. That the yield saves time is
    `make bench`'s to show."""
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("needs 2 CPUs: an engine's and another")
    da, db = rnicd("a", extra=("--engines", "2")), rnicd("b", extra=("--engines", "2"))
    a, b = Side(da), Side(db)
    try:
        (_, acq, qa), (_, bcq, qb) = _pair_on_vector(a, b, 0)
        cpu = engines(db)[0]["cpu"]
        hdr, rv = bcq._ring.hdr, bcq._ring.rv
        for where in (cpu, next(c for c in sorted(mask) if c != cpu)):
            before = engines(db)[0]["poller_yields"]
            qb.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(b.mr.buf, 64, b.mr.lkey)]))
            prod = rv.load_prod()
            assert bcq.poll(1)[0] == 0
            hdr.poller_cpu = where + 1
            qa.post_send(SendWR(wr_id=2, opcode=e.IBV_WR_SEND, num_sge=1,
                                sg=[SGE(a.mr.buf, 64, a.mr.lkey)],
                                send_flags=e.IBV_SEND_SIGNALED))
            deadline = time.monotonic() + 10
            while rv.load_prod() == prod:        # waits without polling: no new hint
                assert time.monotonic() < deadline, "no completion"
                time.sleep(0.001)
            after = engines(db)[0]["poller_yields"]
            if where == cpu:
                assert hdr.poller_cpu == 0 and after == before + 1
            else:
                assert hdr.poller_cpu == where + 1 and after == before
            assert [w.status for w in poll_n(bcq, 1) + poll_n(acq, 1)] == [0, 0]
    finally:
        a.close()
        b.close()

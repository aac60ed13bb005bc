"""Acceptance: 256 MiB of RDMA WRITEs, SENDs and READs through daemons that drop, reorder and
duplicate packets arrives intact, and the counters show the faults were real."""
import hashlib
import os

import pytest
import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.wr import SGE, RecvWR, SendWR

MiB = 1 << 20
FAULT = "drop=0.05,reorder=0.02,dup=0.01,seed={}"


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.slow
def test_256mib_through_faults_arrives_intact(rnicd):
    da, db = rnicd("a", FAULT.format(7)), rnicd("b", FAULT.format(8))
    region, chunk, depth = 32 * MiB, MiB, 16
    a, b = Side(da, mr_size=2 * region, cqe=4096), Side(db, mr_size=2 * region, cqe=4096)
    connect(a, b, mtu=e.IBV_MTU_4096, timeout=12)
    moved = 0
    for rnd in range(256 * MiB // region):
        src = os.urandom(region)
        a.mr.write(src, region, 0)
        b_data = os.urandom(region // 4)
        b.mr.write(b_data, len(b_data), region)     # what A will READ back
        wrs = []
        w_end, s_end = region // 2, region // 2 + region // 4
        for off in range(0, w_end, chunk):          # first half by RDMA WRITE
            w = SendWR(wr_id=len(wrs), opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                       sg=[SGE(a.mr.buf + off, chunk, a.mr.lkey)])
            w.set_wr_rdma(b.mr.rkey, b.mr.buf + off)
            wrs.append(w)
        for off in range(w_end, s_end, chunk):      # next quarter by SEND
            b.qp.post_recv(RecvWR(wr_id=off, num_sge=1, sg=[SGE(b.mr.buf + off, chunk,
                                                                 b.mr.lkey)]))
            wrs.append(SendWR(wr_id=len(wrs), opcode=e.IBV_WR_SEND, num_sge=1,
                              sg=[SGE(a.mr.buf + off, chunk, a.mr.lkey)]))
        for k in range(0, region // 4, chunk):      # a quarter READ from B
            r = SendWR(wr_id=len(wrs), opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                       sg=[SGE(a.mr.buf + region + k, chunk, a.mr.lkey)])
            r.set_wr_rdma(b.mr.rkey, b.mr.buf + region + k)
            wrs.append(r)
        done = []
        for i, wr in enumerate(wrs):
            if i >= depth:
                done += poll_n(a.cq, 1, timeout=120)
            a.qp.post_send(wr)
        done += poll_n(a.cq, len(wrs) - len(done), timeout=120)
        assert [w.status for w in done] == [e.IBV_WC_SUCCESS] * len(wrs), f"round {rnd}"
        assert sorted(w.wr_id for w in done) == list(range(len(wrs)))
        recvs = poll_n(b.cq, (s_end - w_end) // chunk, timeout=120)
        assert all(w.status == e.IBV_WC_SUCCESS and w.byte_len == chunk for w in recvs)
        assert digest(b.mr.read(s_end, 0)) == digest(src[:s_end]), f"round {rnd}"
        assert digest(a.mr.read(region // 4, region)) == digest(b_data), f"round {rnd}"
        moved += s_end + region // 4 + (region - s_end - region // 4)
    ca, cb = a.ctx.get_counters(), b.ctx.get_counters()
    print(f"\nmoved {moved // MiB} MiB; requester {ca}\nresponder {cb}")
    for c in (ca, cb):
        assert all(c.get(f"fault_{k}", 0) > 0 for k in ("drop", "reorder", "dup"))
    assert ca.get("retransmitted_pkts", 0) > 0 and ca.get("rcvd_seq_err", 0) > 0
    assert cb.get("duplicate_request", 0) > 0 and cb.get("out_of_seq_request", 0) > 0
    a.close()
    b.close()

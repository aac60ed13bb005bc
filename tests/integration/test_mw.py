"""Memory windows between two real daemons (IBTA 10.6.7): type 1 and type 2B binds, RDMA
through them, invalidation (LOCAL_INV, the peer's SEND with Invalidate, a type 1 rebind
with length 0, dealloc), and the rules the daemon enforces."""
import errno
import types

import pytest
import rnic.enums as e
from rc_pair import ACCESS, Side, connect, connect_one, poll_n
from rnic.base import inc_rkey
from rnic.errors import RnicError
from rnic.mr import MW, MWBind, MWBindInfo
from rnic.qp import QP, QPCap, QPInitAttr
from rnic.wr import SGE, RecvWR, SendWR

BINDABLE = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_MW_BIND
RW = e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ


def pair(two_daemons, **kw):
    a, b = Side(two_daemons[0]), Side(two_daemons[1], mr_access=BINDABLE)
    connect(a, b, **kw)
    return a, b


def rdma(side, wr_id, opcode, rkey, raddr, off=0, n=64):
    wr = SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[SGE(side.mr.buf + off, n,
                                                               side.mr.lkey)])
    wr.set_wr_rdma(rkey, raddr)
    side.qp.post_send(wr)
    (wc,) = poll_n(side.cq, 1)
    return wc


def bind_type2(side, off, length, access=RW):
    mw = MW(side.pd, e.IBV_MW_TYPE_2)
    wr = SendWR(wr_id=77, opcode=e.IBV_WR_BIND_MW)
    wr.set_bind_wr(mw, MWBindInfo(side.mr, side.mr.buf + off, length, access))
    side.qp.post_send(wr)
    (wc,) = poll_n(side.cq, 1)
    assert (wc.wr_id, wc.status, wc.opcode) == (77, e.IBV_WC_SUCCESS, e.IBV_WC_BIND_MW)
    assert wr.rkey == inc_rkey(mw.rkey) and wr.rkey >> 8 == mw.rkey >> 8
    return mw, wr.rkey


def test_type1_bind_write_read_bounds_and_unbind(two_daemons):
    a, b = pair(two_daemons)
    mw = MW(b.pd, e.IBV_MW_TYPE_1)
    old = mw.rkey
    b.qp.bind_mw(mw, MWBind(MWBindInfo(b.mr, b.mr.buf + 4096, 8192, RW),
                            e.IBV_SEND_SIGNALED, wr_id=5))
    assert mw.rkey == inc_rkey(old)
    (wc,) = poll_n(b.cq, 1)
    assert (wc.wr_id, wc.status, wc.opcode) == (5, e.IBV_WC_SUCCESS, e.IBV_WC_BIND_MW)
    a.mr.write(b"w" * 64, 64, 0)
    assert rdma(a, 1, e.IBV_WR_RDMA_WRITE, mw.rkey, b.mr.buf + 4096).status == 0
    assert b.mr.read(64, 4096) == b"w" * 64
    assert rdma(a, 2, e.IBV_WR_RDMA_READ, mw.rkey, b.mr.buf + 4096 + 8192 - 64,
                off=1000).status == 0
    with pytest.raises(RnicError) as ei:                 # the window holds the MR
        b.mr.close()
    assert ei.value.error_code == errno.EBUSY
    # rebind with length 0: the window is closed, a WRITE through it is refused
    b.qp.bind_mw(mw, MWBind(MWBindInfo(b.mr, b.mr.buf, 0, 0), e.IBV_SEND_SIGNALED))
    assert poll_n(b.cq, 1)[0].status == e.IBV_WC_SUCCESS
    wc = rdma(a, 3, e.IBV_WR_RDMA_WRITE, mw.rkey, b.mr.buf + 4096)
    assert wc.status == e.IBV_WC_REM_ACCESS_ERR
    b.mr.close()                                         # no window holds it now
    a.close()
    b.close()


def test_type2_bind_out_of_window_and_local_invalidate(two_daemons):
    a, b = pair(two_daemons)
    mw, rkey = bind_type2(b, 0, 4096)
    assert rdma(a, 1, e.IBV_WR_RDMA_WRITE, rkey, b.mr.buf + 4032).status == 0
    wc = rdma(a, 2, e.IBV_WR_RDMA_WRITE, rkey, b.mr.buf + 4033)      # one byte beyond
    assert wc.status == e.IBV_WC_REM_ACCESS_ERR
    a.close()
    b.close()

    a, b = pair(two_daemons)
    mw, rkey = bind_type2(b, 0, 4096)
    inv = SendWR(wr_id=9, opcode=e.IBV_WR_LOCAL_INV)
    inv.imm_data = rkey                  # pyverbs: imm_data carries invalidate_rkey
    b.qp.post_send(inv)
    (wc,) = poll_n(b.cq, 1)
    assert (wc.wr_id, wc.status, wc.opcode) == (9, e.IBV_WC_SUCCESS, e.IBV_WC_LOCAL_INV)
    assert rdma(a, 3, e.IBV_WR_RDMA_READ, rkey, b.mr.buf).status == e.IBV_WC_REM_ACCESS_ERR
    a.close()
    b.close()


def test_send_with_invalidate(two_daemons):
    a, b = pair(two_daemons)
    mw, rkey = bind_type2(b, 0, 4096)
    b.qp.post_recv(RecvWR(wr_id=40, num_sge=1, sg=[SGE(b.mr.buf + 8192, 4096, b.mr.lkey)]))
    a.mr.write(b"i" * 3000, 3000, 0)
    s = SendWR(wr_id=41, opcode=e.IBV_WR_SEND_WITH_INV, num_sge=1,
               sg=[SGE(a.mr.buf, 3000, a.mr.lkey)])
    s.imm_data = rkey
    a.qp.post_send(s)
    (wa,) = poll_n(a.cq, 1)
    assert (wa.wr_id, wa.status, wa.opcode) == (41, e.IBV_WC_SUCCESS, e.IBV_WC_SEND)
    (wb,) = poll_n(b.cq, 1)
    assert (wb.wr_id, wb.status, wb.byte_len) == (40, e.IBV_WC_SUCCESS, 3000)
    assert wb.wc_flags & e.IBV_WC_WITH_INV and not wb.wc_flags & e.IBV_WC_WITH_IMM
    assert wb.invalidated_rkey == rkey
    assert b.mr.read(3000, 8192) == b"i" * 3000
    assert rdma(a, 42, e.IBV_WR_RDMA_WRITE, rkey, b.mr.buf).status == e.IBV_WC_REM_ACCESS_ERR
    a.close()
    b.close()


def test_type2_window_refuses_another_qp_and_dealloc_closes_it(two_daemons):
    a, b = pair(two_daemons)
    cap = QPCap(max_send_wr=16, max_recv_wr=16, max_send_sge=1, max_recv_sge=1)
    a2 = types.SimpleNamespace(qp=QP(a.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=a.cq,
                                                        rcq=a.cq, cap=cap)), mr=a.mr, cq=a.cq)
    b2 = types.SimpleNamespace(qp=QP(b.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=b.cq,
                                                        rcq=b.cq, cap=cap)))
    connect_one(a2, b2.qp.qp_num, b.gid, 0x333, 0x444, qp_access=ACCESS)
    connect_one(b2, a2.qp.qp_num, a.gid, 0x444, 0x333, qp_access=ACCESS)
    mw, rkey = bind_type2(b, 0, 4096)
    assert rdma(a, 1, e.IBV_WR_RDMA_WRITE, rkey, b.mr.buf).status == 0
    wc = rdma(a2, 2, e.IBV_WR_RDMA_WRITE, rkey, b.mr.buf)    # same PD, another QP
    assert wc.status == e.IBV_WC_REM_ACCESS_ERR
    mw.close()                                           # dealloc while bound
    mw.close()                                           # idempotent
    assert rdma(a, 3, e.IBV_WR_RDMA_WRITE, rkey, b.mr.buf).status == e.IBV_WC_REM_ACCESS_ERR
    assert b.ctx.get_counters(b.qp)["rcvd_access_err"] == 1
    a.close()
    b.close()


def test_bind_errors(two_daemons):
    a, b = pair(two_daemons)
    with pytest.raises(RnicError) as ei:
        MW(b.pd, 3)
    assert ei.value.error_code == errno.EINVAL and "Failed to allocate MW" in str(ei.value)
    mw2 = MW(b.pd, e.IBV_MW_TYPE_2)
    with pytest.raises(RnicError) as ei:                 # ibv_bind_mw binds type 1 only
        b.qp.bind_mw(mw2, MWBind(MWBindInfo(b.mr, b.mr.buf, 64, RW), e.IBV_SEND_SIGNALED))
    assert ei.value.error_code == errno.EINVAL
    # a window larger than its MR: the daemon refuses the bind, the QP fails
    wr = SendWR(wr_id=8, opcode=e.IBV_WR_BIND_MW)
    wr.set_bind_wr(mw2, MWBindInfo(b.mr, b.mr.buf, b.mr.length + 1, RW))
    b.qp.post_send(wr)
    (wc,) = poll_n(b.cq, 1)
    assert (wc.wr_id, wc.status) == (8, e.IBV_WC_MW_BIND_ERR)
    a.close()
    b.close()

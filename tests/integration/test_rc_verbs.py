"""Every RC opcode between two real daemons, with the WC fields an app checks."""
import errno
import os

import pytest
import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.cq import CQ, CompChannel
from rnic.errors import RnicError
from rnic.qp import QP, QPAttr, QPCap, QPInitAttr
from rnic.srq import SRQ, SrqAttr, SrqInitAttr
from rnic.wr import SGE, RecvWR, SendWR


@pytest.fixture
def pair(two_daemons):
    da, db = two_daemons
    a, b = Side(da), Side(db)
    connect(a, b)
    yield a, b
    a.close()
    b.close()


def send_wr(wr_id, opcode, sges, flags=e.IBV_SEND_SIGNALED):
    return SendWR(wr_id=wr_id, opcode=opcode, num_sge=len(sges), sg=sges, send_flags=flags)


def test_every_opcode(pair):
    a, b = pair
    data = os.urandom(20000)
    a.mr.write(data, len(data), 0)
    b.mr.write((1000).to_bytes(8, "little"), 8, 0)
    for i in range(3):
        b.qp.post_recv(RecvWR(wr_id=100 + i, num_sge=1,
                              sg=[SGE(b.mr.buf + 100000 + i * 32768, 32768, b.mr.lkey)]))
    s = send_wr(1, e.IBV_WR_SEND, [SGE(a.mr.buf, 10000, a.mr.lkey),
                                   SGE(a.mr.buf + 10000, 10000, a.mr.lkey)])
    a.qp.post_send(s)
    s = send_wr(2, e.IBV_WR_SEND_WITH_IMM, [SGE(a.mr.buf, 64, a.mr.lkey)])
    s.imm_data = 0x12345678
    a.qp.post_send(s)
    w = send_wr(3, e.IBV_WR_RDMA_WRITE, [SGE(a.mr.buf, 20000, a.mr.lkey)])
    w.set_wr_rdma(b.mr.rkey, b.mr.buf + 300000)
    a.qp.post_send(w)
    w = send_wr(4, e.IBV_WR_RDMA_WRITE_WITH_IMM, [SGE(a.mr.buf, 33, a.mr.lkey)])
    w.set_wr_rdma(b.mr.rkey, b.mr.buf + 400000)
    w.imm_data = 99
    a.qp.post_send(w)
    r = send_wr(5, e.IBV_WR_RDMA_READ, [SGE(a.mr.buf + 500000, 20000, a.mr.lkey)])
    r.set_wr_rdma(b.mr.rkey, b.mr.buf + 300000)
    a.qp.post_send(r)
    c = send_wr(6, e.IBV_WR_ATOMIC_CMP_AND_SWP, [SGE(a.mr.buf + 600000, 8, a.mr.lkey)])
    c.set_wr_atomic(b.mr.rkey, b.mr.buf, 1000, 2000)
    a.qp.post_send(c)
    f = send_wr(7, e.IBV_WR_ATOMIC_FETCH_AND_ADD, [SGE(a.mr.buf + 600008, 8, a.mr.lkey)])
    f.set_wr_atomic(b.mr.rkey, b.mr.buf, 5)
    a.qp.post_send(f)
    wcs = poll_n(a.cq, 7)
    assert [(w.wr_id, w.status) for w in wcs] == [(i, e.IBV_WC_SUCCESS) for i in range(1, 8)]
    assert [w.opcode for w in wcs] == [e.IBV_WC_SEND, e.IBV_WC_SEND, e.IBV_WC_RDMA_WRITE,
                                       e.IBV_WC_RDMA_WRITE, e.IBV_WC_RDMA_READ,
                                       e.IBV_WC_COMP_SWAP, e.IBV_WC_FETCH_ADD]
    assert wcs[4].byte_len == 20000 and all(w.qp_num == a.qp.qp_num for w in wcs)
    rw = poll_n(b.cq, 3)
    assert [(w.wr_id, w.opcode, w.byte_len) for w in rw] == [
        (100, e.IBV_WC_RECV, 20000), (101, e.IBV_WC_RECV, 64),
        (102, e.IBV_WC_RECV_RDMA_WITH_IMM, 33)]
    assert rw[1].imm_data == 0x12345678 and rw[1].wc_flags & e.IBV_WC_WITH_IMM
    assert rw[2].imm_data == 99 and rw[2].qp_num == b.qp.qp_num
    assert b.mr.read(20000, 100000) == data
    assert b.mr.read(20000, 300000) == data
    assert b.mr.read(33, 400000) == data[:33]
    assert a.mr.read(20000, 500000) == data
    assert int.from_bytes(a.mr.read(8, 600000), "little") == 1000
    assert int.from_bytes(a.mr.read(8, 600008), "little") == 2000
    assert int.from_bytes(b.mr.read(8, 0), "little") == 2005


def test_inline_and_unsignaled(pair):
    a, b = pair
    b.qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(b.mr.buf, 4096, b.mr.lkey)]))
    a.mr.write(b"hello inline", 12, 0)
    a.qp.post_send(send_wr(10, e.IBV_WR_SEND, [SGE(a.mr.buf, 12, a.mr.lkey)],
                           e.IBV_SEND_SIGNALED | e.IBV_SEND_INLINE))
    for i in range(5):      # unsignaled WRITEs: no completion, but their slots are freed
        w = send_wr(20 + i, e.IBV_WR_RDMA_WRITE, [SGE(a.mr.buf, 12, a.mr.lkey)], 0)
        w.set_wr_rdma(b.mr.rkey, b.mr.buf + 8192 + 16 * i)
        a.qp.post_send(w)
    w = send_wr(30, e.IBV_WR_RDMA_WRITE, [SGE(a.mr.buf, 12, a.mr.lkey)])
    w.set_wr_rdma(b.mr.rkey, b.mr.buf + 9000)
    a.qp.post_send(w)
    assert [w.wr_id for w in poll_n(a.cq, 2)] == [10, 30]
    assert poll_n(b.cq, 1)[0].byte_len == 12
    assert b.mr.read(12, 0) == b"hello inline"
    assert b.mr.read(12, 8192 + 64) == b"hello inline"


def test_inline_room_is_the_sge_room(two_daemons):
    """max_inline_data 0 and max_send_sge 1: the QP reports (and takes) 16 inline bytes, its
    WQE's SGE room, as ibv_create_qp(3) allows and rxe and mlx5 do; 17 are refused."""
    da, db = two_daemons
    a, b = Side(da, sge=1, inline=0), Side(db)
    try:
        connect(a, b)
        assert a.qp.cap.max_inline_data == 16
        b.qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(b.mr.buf, 64, b.mr.lkey)]))
        a.mr.write(b"sixteen bytes!!!", 16, 0)
        a.qp.post_send(send_wr(10, e.IBV_WR_SEND, [SGE(a.mr.buf, 16, a.mr.lkey)],
                               e.IBV_SEND_SIGNALED | e.IBV_SEND_INLINE))
        assert [(w.wr_id, w.status) for w in poll_n(a.cq, 1)] == [(10, e.IBV_WC_SUCCESS)]
        assert poll_n(b.cq, 1)[0].byte_len == 16 and b.mr.read(16, 0) == b"sixteen bytes!!!"
        with pytest.raises(RnicError) as ei:
            a.qp.post_send(send_wr(11, e.IBV_WR_SEND, [SGE(a.mr.buf, 17, a.mr.lkey)],
                                   e.IBV_SEND_SIGNALED | e.IBV_SEND_INLINE))
        assert "max_inline_data" in str(ei.value)
    finally:
        a.close()
        b.close()


class SrqPeer:
    """The receiving end of one connection: a QP whose receives come from a shared SRQ."""

    def __init__(self, host: Side, srq):
        self.gid = host.gid
        self.qp = QP(host.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=host.cq, rcq=host.cq,
                                         srq=srq, cap=QPCap(max_send_wr=16, max_send_sge=1)))


def test_srq_shared_by_two_connections(two_daemons):
    da, db = two_daemons
    a1, a2, host = Side(da), Side(da), Side(db)
    srq = SRQ(host.pd, SrqInitAttr(SrqAttr(max_wr=64, max_sge=1)))
    peers = [SrqPeer(host, srq), SrqPeer(host, srq)]
    connect(a1, peers[0])
    connect(a2, peers[1])
    for i in range(8):
        srq.post_recv(RecvWR(wr_id=i, num_sge=1,
                             sg=[SGE(host.mr.buf + i * 1024, 1024, host.mr.lkey)]))
    for n, side in enumerate((a1, a2, a1)):
        side.qp.post_send(send_wr(n, e.IBV_WR_SEND, [SGE(side.mr.buf, 100 + n, side.mr.lkey)]))
    assert all(w.status == e.IBV_WC_SUCCESS for w in poll_n(a1.cq, 2) + poll_n(a2.cq, 1))
    rw = poll_n(host.cq, 3)
    assert sorted(w.byte_len for w in rw) == [100, 101, 102]
    assert {w.qp_num for w in rw} == {p.qp.qp_num for p in peers}
    for side in (a1, a2, host):
        side.close()


def test_bad_handles_and_transitions_give_clear_errors(pair):
    a, b = pair
    with pytest.raises(RnicError) as exc:
        a.qp.to_rtr(QPAttr())           # RTS -> RTR is not a transition
    assert exc.value.code == 22 and "transition" in str(exc.value)
    bad = send_wr(1, e.IBV_WR_SEND, [SGE(a.mr.buf, 10, a.mr.lkey ^ 0x1)])
    with pytest.raises(RnicError) as exc:
        a.qp.post_send(bad)
    assert exc.value.code == 22 and "lkey" in str(exc.value)
    outside = send_wr(2, e.IBV_WR_SEND, [SGE(a.mr.buf + a.mr.length - 4, 10, a.mr.lkey)])
    with pytest.raises(RnicError) as exc:
        a.qp.post_send(outside)
    assert exc.value.code == 22


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_polling_a_cq_fails_once_the_daemon_is_gone(rnicd, how):
    """The daemon writes every completion: once it is gone (SIGTERM or SIGKILL) a program
    waiting for a completion event or polling its CQ gets an error (EIO) instead of waiting
    or polling forever."""
    d = rnicd("a")
    a = Side(d)
    ch = CompChannel(a.ctx)
    armed = CQ(a.ctx, 16, None, ch, 0)
    armed.req_notify()
    try:
        if how == "killed":
            d.proc.kill()
            d.proc.wait(10)
        else:
            d.stop()
        with pytest.raises(RnicError) as err:      # waiting for an event: an error, no hang
            ch.get_cq_event(timeout=30)
        assert err.value.errno == errno.EIO
        with pytest.raises(RnicError) as err:
            for _ in range(1_000_000):
                a.cq.poll(1)
        assert err.value.args[0] == errno.EIO or "rnicd is gone" in str(err.value)
    finally:
        a.close()

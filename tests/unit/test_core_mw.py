"""Memory windows in the RC core, sans-I/O (IBTA 10.6.7): bind WRs and LOCAL_INV in SQ order,
remote access through windows (one check: rnic_dp_mr_check), SEND with Invalidate replayed packet
by packet, and the control verbs' rules (dereg EBUSY, dealloc while bound)."""
import errno

import pytest
from rc_harness import Host, connect, connect_to, run

from rnicd import native
from rnicd.errors import VerbsError
from rnicd.wire import abi, roce
from rnicd.wire import opcodes as op

S = abi.WCStatus
A = abi.Access
W = abi.WROpcode
BINDABLE = A.IBV_ACCESS_LOCAL_WRITE | A.IBV_ACCESS_MW_BIND


def inc_rkey(rkey):
    return (rkey & 0xFFFFFF00) | ((rkey + 1) & 0xFF)


def post_bind(h: Host, qp, wr_id, mw, rkey, mr=None, addr=0, length=0, access=0,
              flags=abi.IBV_SEND_SIGNALED):
    """A BIND_MW WQE as rnic_abi.h lays it out (the bind_* fields)."""
    ring = qp.sq_ring
    prod = ring.load_prod()
    w = ring.send_wqe(prod)
    native.ffi.memmove(w, bytes(64), 64)
    w.wr_id, w.opcode, w.send_flags, w.num_sge = wr_id, W.IBV_WR_BIND_MW, flags, 0
    w.bind_mw, w.rkey, w.bind_lkey = mw["mw"], rkey, mr.lkey if mr is not None else 0
    w.remote_addr, w.bind_length, w.bind_access = addr, length, access
    ring.store_prod(prod + 1)
    h.dev.doorbell(h.s, h.now)


def post_local_inv(h: Host, qp, wr_id, rkey):
    h.post_send(qp, wr_id, W.IBV_WR_LOCAL_INV, imm=rkey)


@pytest.fixture
def pair():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(256), b.cq(256)
    qa, qb = a.qp(ca), b.qp(cb)
    connect(a, qa, b, qb)
    return a, b, ca, cb, qa, qb


def bound_type2(b: Host, qb, cb, mrb, off=0, length=4096,
                access=A.IBV_ACCESS_REMOTE_WRITE | A.IBV_ACCESS_REMOTE_READ):
    mw = b.call("alloc_mw", pd=b.pd, mw_type=2)
    rkey = inc_rkey(mw["rkey"])
    post_bind(b, qb, 50, mw, rkey, mrb, mrb.iova + off, length, access)
    assert [(c["wr_id"], c["status"], c["opcode"]) for c in b.poll(cb)] == [
        (50, S.IBV_WC_SUCCESS, abi.IBV_WC_BIND_MW)]
    return mw, rkey


def test_type2_window_write_read_and_bounds(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    ma.buf[:4096] = bytes(range(256)) * 16
    mw, rkey = bound_type2(b, qb, cb, mb, off=8192)
    a.post_send(qa, 1, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 4096)], rkey=rkey,
                raddr=mb.iova + 8192)
    a.post_send(qa, 2, W.IBV_WR_RDMA_READ, [ma.sge(20000, 100)], rkey=rkey,
                raddr=mb.iova + 8192 + 10)
    run(a, b)
    assert [(c["wr_id"], c["status"]) for c in a.poll(ca)] == [(1, S.IBV_WC_SUCCESS),
                                                               (2, S.IBV_WC_SUCCESS)]
    assert mb.buf[8192:12288] == ma.buf[:4096] and ma.buf[20000:20100] == ma.buf[10:110]
    # one byte past the window (still inside the MR): remote access error, QP to error
    a.post_send(qa, 3, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 2)], rkey=rkey,
                raddr=mb.iova + 8192 + 4095)
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_REM_ACCESS_ERR
    assert qb.counters["rcvd_access_err"] == 1


def test_window_key_is_no_lkey_and_mr_rkey_needs_remote_access(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mw, rkey = bound_type2(b, qb, cb, mb)
    # the MR itself has no remote access: only the window opens it
    a.post_send(qa, 1, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=mb.rkey, raddr=mb.iova)
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_REM_ACCESS_ERR
    # a window's rkey used as an lkey: local protection error
    qb2 = b.qp(cb)
    connect(a, a.qp(ca), b, qb2)
    mw2, rkey2 = bound_type2(b, qb2, cb, mb)
    b.post_send(qb2, 9, W.IBV_WR_SEND, [(mb.iova, 8, rkey2)])
    assert b.poll(cb)[0]["status"] == S.IBV_WC_LOC_PROT_ERR


def test_local_inv_completes_in_order_and_closes_the_window(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mw, rkey = bound_type2(b, qb, cb, mb)
    b.post_recv(qb, 70, [mb.sge(30000, 64)])
    # b sends first (unacknowledged until run), then invalidates: the LOCAL_INV takes effect
    # at once but completes after the SEND
    b.post_send(qb, 1, W.IBV_WR_SEND, [mb.sge(0, 8)])
    a.post_recv(qa, 80, [ma.sge(0, 64)])
    post_local_inv(b, qb, 2, rkey)
    assert b.poll(cb) == []
    run(a, b)
    assert [(c["wr_id"], c["opcode"]) for c in b.poll(cb)] == [(1, abi.IBV_WC_SEND),
                                                              (2, abi.IBV_WC_LOCAL_INV)]
    a.post_send(qa, 3, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=rkey, raddr=mb.iova)
    run(a, b)
    assert [(c["wr_id"], c["status"]) for c in a.poll(ca)] == [
        (80, S.IBV_WC_SUCCESS), (3, S.IBV_WC_REM_ACCESS_ERR)]


def test_send_with_invalidate(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mw, rkey = bound_type2(b, qb, cb, mb)
    b.post_recv(qb, 7, [mb.sge(20000, 8192)])
    ma.buf[:3000] = b"x" * 3000
    a.post_send(qa, 1, W.IBV_WR_SEND_WITH_INV, [ma.sge(0, 3000)], imm=rkey)  # 3 packets
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_SUCCESS
    (c,) = b.poll(cb)
    assert (c["wr_id"], c["status"], c["byte_len"]) == (7, S.IBV_WC_SUCCESS, 3000)
    assert c["wc_flags"] == abi.WCFlags.IBV_WC_WITH_INV and c["imm_data"] == rkey
    assert mb.buf[20000:23000] == b"x" * 3000
    a.post_send(qa, 2, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=rkey, raddr=mb.iova)
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_REM_ACCESS_ERR
    # invalidated: b may bind it again (on a new connection), with the next key
    qa2, qb2 = a.qp(ca), b.qp(cb)
    connect(a, qa2, b, qb2, psn_a=700, psn_b=800)
    post_bind(b, qb2, 51, mw, inc_rkey(rkey), mb, mb.iova, 64, A.IBV_ACCESS_REMOTE_WRITE)
    assert b.poll(cb)[-1]["status"] == S.IBV_WC_SUCCESS


def test_send_with_invalidate_of_a_bad_rkey_is_naked(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    b.post_recv(qb, 7, [mb.sge(0, 64)])
    a.post_send(qa, 1, W.IBV_WR_SEND_WITH_INV, [ma.sge(0, 8)], imm=mb.rkey)   # an MR's
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_REM_INV_REQ_ERR
    assert b.poll(cb)[0]["status"] == S.IBV_WC_REM_INV_REQ_ERR
    assert qb.counters["rcvd_inv_err"] == 1


def test_type2_window_serves_only_its_qp():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa1, qa2, qb1, qb2 = a.qp(ca), a.qp(ca), b.qp(cb), b.qp(cb)
    connect(a, qa1, b, qb1)
    connect(a, qa2, b, qb2, psn_a=300, psn_b=400)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mw, rkey = bound_type2(b, qb1, cb, mb)
    a.post_send(qa2, 1, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=rkey, raddr=mb.iova)
    a.post_send(qa1, 2, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=rkey, raddr=mb.iova)
    run(a, b)
    assert sorted((c["wr_id"], c["status"]) for c in a.poll(ca)) == [
        (1, S.IBV_WC_REM_ACCESS_ERR), (2, S.IBV_WC_SUCCESS)]
    # destroying the QP it is bound to invalidates it (its QPN may come back)
    b.call("destroy_qp", qp=qb1.handle)
    assert b.dev.keys.by_rkey(rkey).bound is False


def test_type1_bind_rebind_and_unbind(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mw = b.call("alloc_mw", pd=b.pd, mw_type=1)
    k1 = inc_rkey(mw["rkey"])
    post_bind(b, qb, 1, mw, k1, mb, mb.iova, 64, A.IBV_ACCESS_REMOTE_WRITE)
    k2 = inc_rkey(k1)       # a type 1 window may be moved while bound
    post_bind(b, qb, 2, mw, k2, mb, mb.iova + 64, 64, A.IBV_ACCESS_REMOTE_WRITE)
    assert [c["status"] for c in b.poll(cb)] == [S.IBV_WC_SUCCESS] * 2
    a.post_send(qa, 1, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=k2, raddr=mb.iova + 64)
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_SUCCESS
    with pytest.raises(VerbsError) as ei:
        b.call("dereg_mr", mr=max(b.s.mrs))
    assert ei.value.code == errno.EBUSY
    # LOCAL_INV cannot invalidate a type 1 window: the WR fails, the QP with it
    post_local_inv(b, qb, 3, k2)
    assert b.poll(cb)[0]["status"] == S.IBV_WC_LOC_QP_OP_ERR
    # unbind by length 0 (on a new QP): the key moves on, nothing is reachable
    qb2 = b.qp(cb)
    qa2 = a.qp(ca)
    connect(a, qa2, b, qb2, psn_a=500, psn_b=600)
    k3 = inc_rkey(k2)
    post_bind(b, qb2, 4, mw, k3, mb, mb.iova, 0, 0)
    assert b.poll(cb)[-1]["status"] == S.IBV_WC_SUCCESS
    b.call("dereg_mr", mr=max(b.s.mrs))         # no window holds it now


@pytest.mark.parametrize("why,kw", [
    ("no MW_BIND on the MR", dict(mr_access=A.IBV_ACCESS_LOCAL_WRITE)),
    ("remote write needs local write", dict(mr_access=A.IBV_ACCESS_MW_BIND)),
    ("outside the MR", dict(off=4096 * 15 + 1)),
    ("type 1 zero-based", dict(mw_type=1, access=A.IBV_ACCESS_ZERO_BASED)),
    ("type 2 bound twice", dict(twice=True)),
    ("wrong index", dict(bad_rkey=True)),
])
def test_bind_errors_complete_with_mw_bind_err(pair, why, kw):
    a, b, ca, cb, qa, qb = pair
    mb = b.mr(1 << 16, access=kw.get("mr_access", BINDABLE))
    mw = b.call("alloc_mw", pd=b.pd, mw_type=kw.get("mw_type", 2))
    rkey = inc_rkey(mw["rkey"]) ^ (0x100 if kw.get("bad_rkey") else 0)
    access = A.IBV_ACCESS_REMOTE_WRITE | kw.get("access", 0)
    if kw.get("twice"):
        post_bind(b, qb, 1, mw, rkey, mb, mb.iova, 4096, access)
        rkey = inc_rkey(rkey)
    post_bind(b, qb, 2, mw, rkey, mb, mb.iova + kw.get("off", 0), 4096, access)
    wcs = b.poll(cb)
    assert wcs[-1]["wr_id"] == 2 and wcs[-1]["status"] == S.IBV_WC_MW_BIND_ERR, why
    assert qb.state == abi.IBV_QPS_ERR
    assert qb.counters["mw_bind_err"] == 1


def test_dealloc_bound_window_closes_it(pair):
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mw, rkey = bound_type2(b, qb, cb, mb)
    b.call("dealloc_mw", mw=mw["mw"])
    b.call("dereg_mr", mr=max(b.s.mrs))          # no window holds it any more
    a.post_send(qa, 1, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=rkey, raddr=mb.iova)
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_REM_ACCESS_ERR


def test_alloc_mw_checks_type_and_counts_apart_from_mrs():
    h = Host("127.0.0.1")
    with pytest.raises(VerbsError) as ei:
        h.call("alloc_mw", pd=h.pd, mw_type=3)
    assert ei.value.code == errno.EINVAL
    w = h.call("alloc_mw", pd=h.pd, mw_type=1)
    with pytest.raises(VerbsError) as ei:       # the window holds its PD
        h.call("dealloc_pd", pd=h.pd)
    assert ei.value.code == errno.EBUSY
    h.mr(4096)
    assert len(h.dev.keys) == 1 and h.dev.keys.windows == 1
    h.call("dealloc_mw", mw=w["mw"])
    assert h.dev.keys.windows == 0 and h.dev.windows == set()


def test_replayed_send_with_invalidate_packets():
    """A peer's SEND FIRST, MIDDLE (data plane) then LAST WITH INVALIDATE (core/): the window
    is invalidated with the completion; a duplicate LAST is re-acknowledged, not re-run."""
    b = Host("127.0.0.2")
    cb = b.cq()
    qb = b.qp(cb)
    connect_to(b, qb, "127.0.0.1", 0x99, mtu=abi.IBV_MTU_256, my_psn=100, peer_psn=200)
    mb = b.mr(1 << 16, access=BINDABLE)
    mw, rkey = bound_type2(b, qb, cb, mb)
    b.post_recv(qb, 5, [mb.sge(0, 1024)])
    O = op.Opcode

    def deliver(opcode, psn, payload, ieth=None):
        p = roce.Packet(opcode=opcode, dest_qp=qb.qp_num, psn=psn, ackreq=True,
                        ieth_rkey=ieth)
        data = roce.build(p, payload, src_ip="127.0.0.1", dst_ip=b.dev.ip, sport=4791,
                          dport=4791)
        b.dev.receive(data, "127.0.0.1", 4791, b.now)
        b.dev.end_batch(b.now)
        return b.dev.take_tx()

    deliver(O.RC_SEND_FIRST, 200, b"a" * 256)
    deliver(O.RC_SEND_MIDDLE, 201, b"b" * 256)
    assert b.poll(cb) == []
    acks = deliver(O.RC_SEND_LAST_WITH_INVALIDATE, 202, b"c" * 10, ieth=rkey)
    (c,) = b.poll(cb)
    assert (c["byte_len"], c["wc_flags"], c["imm_data"]) == (522, abi.IBV_WC_WITH_INV, rkey)
    assert b.dev.keys.by_rkey(rkey).bound is False
    ack = roce.parse(acks[-1][0], src_ip=b.dev.ip, dst_ip="127.0.0.1", sport=4791, dport=4791)
    assert ack.opcode == O.RC_ACKNOWLEDGE and ack.psn == 202
    b.post_recv(qb, 6, [mb.sge(0, 1024)])
    deliver(O.RC_SEND_LAST_WITH_INVALIDATE, 202, b"c" * 10, ieth=rkey)   # duplicate
    assert b.poll(cb) == [] and qb.state == abi.IBV_QPS_RTS
    assert qb.counter_snapshot()["duplicate_request"] == 1


def test_zero_based_window_atomic_and_read(pair):
    """A zero-based type 2 window: the peer addresses it from 0; atomics go through the
    responder's path with the pointer rnic_dp_mr_check gives."""
    a, b, ca, cb, qa, qb = pair
    ma, mb = a.mr(1 << 16), b.mr(1 << 16, access=BINDABLE)
    mb.buf[4096 + 8:4096 + 16] = (41).to_bytes(8, "little")
    access = A.IBV_ACCESS_REMOTE_ATOMIC | A.IBV_ACCESS_REMOTE_READ | A.IBV_ACCESS_ZERO_BASED
    mw, rkey = bound_type2(b, qb, cb, mb, off=4096, length=64, access=access)
    a.post_send(qa, 1, W.IBV_WR_ATOMIC_FETCH_AND_ADD, [ma.sge(0, 8)], rkey=rkey, raddr=8,
                compare_add=1)
    a.post_send(qa, 2, W.IBV_WR_RDMA_READ, [ma.sge(100, 16)], rkey=rkey, raddr=0)
    run(a, b)
    assert [(c["wr_id"], c["status"]) for c in a.poll(ca)] == [(1, S.IBV_WC_SUCCESS),
                                                               (2, S.IBV_WC_SUCCESS)]
    assert int.from_bytes(ma.buf[0:8], "little") == 41
    assert int.from_bytes(mb.buf[4104:4112], "little") == 42
    assert ma.buf[100:116] == mb.buf[4096:4112]
    # the window has no remote write: a WRITE through it is refused
    a.post_send(qa, 3, W.IBV_WR_RDMA_WRITE, [ma.sge(0, 8)], rkey=rkey, raddr=0)
    run(a, b)
    assert a.poll(ca)[0]["status"] == S.IBV_WC_REM_ACCESS_ERR

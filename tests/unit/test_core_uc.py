"""UC QPs, sans-I/O (IBTA 9.8): two devices joined by an in-memory network (rc_harness).

UC carries SENDs and RDMA WRITEs with RC's segmentation, and nothing else: no ACK, no NAK,
no retransmission. A lost packet loses its message only; the responder resynchronises on the
next FIRST/ONLY and uses the receive WQE of an abandoned SEND again.
"""
import errno
import random

import pytest
from rc_harness import Host, connect_uc, run

from rnicd.errors import VerbsError
from rnicd.wire import abi, roce
from rnicd.wire import opcodes as op

S = abi.WCStatus
M = abi.QPAttrMask
UC_OPS = set(range(0x20, 0x2C))


@pytest.fixture
def pair():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(4096), b.cq(4096)
    qa = a.qp(ca, max_send_wr=256, max_recv_wr=256, qp_type=abi.IBV_QPT_UC)
    qb = b.qp(cb, max_send_wr=256, max_recv_wr=256, qp_type=abi.IBV_QPT_UC)
    return a, b, ca, cb, qa, qb


class Wire:
    """A network that records every datagram (parsed) and drops those `drop` picks."""

    def __init__(self, drop=lambda pkt, n: False):
        self.seen, self.drop, self.n = [], drop, 0

    def __call__(self, src, data):
        pkt = roce.parse(data, check_icrc=False)
        self.seen.append((src.dev.ip, pkt.opcode, pkt.psn, pkt.ackreq))
        self.n += 1
        return [] if self.drop(pkt, self.n - 1) else [data]


@pytest.mark.parametrize("mtu", [abi.IBV_MTU_256, abi.IBV_MTU_1024, abi.IBV_MTU_4096])
def test_sends_and_writes_at_every_size(pair, mtu):
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=mtu)
    ma, mb = a.mr(1 << 19), b.mr(1 << 19)
    ma.buf[:] = random.Random(mtu).randbytes(1 << 19)
    sizes = [0, 1, abi.mtu_bytes(mtu), abi.mtu_bytes(mtu) + 1, 10000]
    for i in range(3 * len(sizes)):
        b.post_recv(qb, 100 + i, [mb.sge(i * 12000, 12000)])
    wire = Wire()
    for i, n in enumerate(sizes):
        a.post_send(qa, 10 + i, abi.IBV_WR_SEND, [ma.sge(i, n)])
        a.post_send(qa, 20 + i, abi.IBV_WR_SEND_WITH_IMM, [ma.sge(i, n)], imm=0x1000 + i)
        a.post_send(qa, 30 + i, abi.IBV_WR_RDMA_WRITE, [ma.sge(i, n)], rkey=mb.rkey,
                    raddr=mb.iova + 0x40000 + i * 0x3000)
        a.post_send(qa, 40 + i, abi.IBV_WR_RDMA_WRITE_WITH_IMM, [ma.sge(i, n)], rkey=mb.rkey,
                    raddr=mb.iova + 0x60000 + i * 0x3000, imm=0x2000 + i)
    # the requester completes a WQE once its last packet is sent: before anything arrives
    wa = a.poll(ca)
    assert sorted(w["wr_id"] for w in wa) == sorted(
        k + i for k in (10, 20, 30, 40) for i in range(len(sizes)))
    assert all(w["status"] == S.IBV_WC_SUCCESS for w in wa)
    assert [w["wr_id"] for w in wa] == [k + i for i in range(len(sizes)) for k in (10, 20, 30, 40)]
    run(a, b, net=wire)
    # only UC opcodes, never an AckReq, and nothing comes back
    assert {o for _ip, o, _p, _r in wire.seen} <= UC_OPS
    assert not any(r for *_x, r in wire.seen)
    assert all(ip == a.dev.ip for ip, *_x in wire.seen)
    wb = b.poll(cb)
    assert all(w["status"] == S.IBV_WC_SUCCESS for w in wb), wb
    got = [(w["opcode"], w["byte_len"], w["imm_data"]) for w in wb]
    want = []
    for i, n in enumerate(sizes):
        want += [(abi.IBV_WC_RECV, n, 0), (abi.IBV_WC_RECV, n, 0x1000 + i),
                 (abi.IBV_WC_RECV_RDMA_WITH_IMM, n, 0x2000 + i)]
    assert got == want
    recv_ids = [w["wr_id"] for w in wb if w["opcode"] == abi.IBV_WC_RECV]
    for k, (i, n) in enumerate((i, n) for i, n in enumerate(sizes) for _ in (0, 1)):
        j = recv_ids[k] - 100
        assert mb.buf[j * 12000:j * 12000 + n] == ma.buf[i:i + n]
    for i, n in enumerate(sizes):
        off = 0x40000 + i * 0x3000
        assert mb.buf[off:off + n] == ma.buf[i:i + n]
        off = 0x60000 + i * 0x3000
        assert mb.buf[off:off + n] == ma.buf[i:i + n]
    assert b.dev.dp.fast_pkts > 0           # in-order UC packets take the C fast path
    assert qb.counters["out_of_seq_request"] == 0


def _recv_all(b, qb, mb, n, size=8192):
    for i in range(n):
        b.post_recv(qb, 100 + i, [mb.sge(i * size, size)])


def test_gap_mid_send_loses_that_message_and_reuses_its_wqe(pair):
    """A lost MIDDLE: the SEND in progress is abandoned without a completion, its receive
    WQE is used (from its start) by the next SEND, and later messages arrive."""
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_1024)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    ma.buf[:] = random.Random(2).randbytes(1 << 16)
    _recv_all(b, qb, mb, 4)
    lost_psn = 100 + 1                     # the second packet of the first SEND (3 packets)
    wire = Wire(lambda pkt, n: pkt.psn == lost_psn)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 3000)])
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(5000, 2500)])
    a.post_send(qa, 3, abi.IBV_WR_SEND_WITH_IMM, [ma.sge(9000, 10)], imm=5)
    assert [w["status"] for w in a.poll(ca)] == [S.IBV_WC_SUCCESS] * 3
    run(a, b, net=wire)
    wb = b.poll(cb)
    assert [(w["wr_id"], w["status"], w["byte_len"]) for w in wb] == [
        (100, S.IBV_WC_SUCCESS, 2500), (101, S.IBV_WC_SUCCESS, 10)]
    assert mb.buf[:2500] == ma.buf[5000:7500]
    assert mb.buf[8192:8202] == ma.buf[9000:9010]
    c = qb.counters
    assert c["out_of_seq_request"] >= 1 and c["uc_dropped_msgs"] == 1
    assert qb.state == abi.IBV_QPS_RTS and qa.state == abi.IBV_QPS_RTS
    assert not [x for x in wire.seen if x[0] == b.dev.ip]      # no NAK, no ACK


def test_gap_mid_write_then_more_messages(pair):
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    ma.buf[:] = random.Random(3).randbytes(1 << 16)
    _recv_all(b, qb, mb, 2)
    # WRITE 1: PSNs 100..103 (1000 bytes at MTU 256), its LAST (103) is lost
    wire = Wire(lambda pkt, n: pkt.psn == 103)
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE_WITH_IMM, [ma.sge(0, 1000)], rkey=mb.rkey,
                raddr=mb.iova + 0x4000, imm=1)
    a.post_send(qa, 2, abi.IBV_WR_RDMA_WRITE_WITH_IMM, [ma.sge(2000, 600)], rkey=mb.rkey,
                raddr=mb.iova + 0x8000, imm=2)
    a.post_send(qa, 3, abi.IBV_WR_SEND, [ma.sge(4000, 300)])
    run(a, b, net=wire)
    wb = b.poll(cb)
    # the first WRITE never completes (its immediate is lost with its LAST); the next
    # FIRST comes with an unexpected PSN and is taken as the start of a new message
    assert [(w["wr_id"], w["opcode"], w["imm_data"], w["byte_len"]) for w in wb] == [
        (100, abi.IBV_WC_RECV_RDMA_WITH_IMM, 2, 600), (101, abi.IBV_WC_RECV, 0, 300)]
    assert mb.buf[0x8000:0x8000 + 600] == ma.buf[2000:2600]
    assert qb.counters["uc_dropped_msgs"] == 1


def test_lost_first_drops_the_rest_of_its_message(pair):
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    _recv_all(b, qb, mb, 2)
    wire = Wire(lambda pkt, n: pkt.psn == 100)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 1000)])     # PSN 100..103
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 100)])      # PSN 104
    run(a, b, net=wire)
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(100, 100)]
    assert qb.counters["uc_dropped_pkts"] == 3              # MIDDLE, MIDDLE, LAST
    assert qb.responder.epsn == 105


def test_replayed_psn_gap_packets_sans_io(pair):
    """The responder alone, fed a crafted sequence: FIRST, (gap), LAST, MIDDLE of nothing,
    then an ONLY far ahead: only the ONLY is delivered, into the first receive WQE."""
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    mb = b.mr(1 << 16)
    _recv_all(b, qb, mb, 2, size=4096)

    def send(opcode, psn, payload):
        p = roce.Packet(opcode=opcode, dest_qp=qb.qp_num, psn=psn,
                        imm=9 if op.OPCODES[opcode].immdt else None)
        b.dev.receive(roce.build(p, payload, src_ip=a.dev.ip, dst_ip=b.dev.ip, sport=4791,
                                 dport=4791), a.dev.ip, 4791, b.now)

    O = op.Opcode
    send(O.UC_SEND_FIRST, 200, b"A" * 256)
    send(O.UC_SEND_LAST, 202, b"B" * 10)         # 201 lost: abandoned
    send(O.UC_SEND_MIDDLE, 203, b"C" * 256)      # still dropped: no FIRST since
    assert b.poll(cb) == []
    assert qb.responder.epsn == 201              # waits for a FIRST/ONLY to resync
    send(O.UC_SEND_ONLY_WITH_IMMEDIATE, 5000, b"D" * 7)
    send(O.UC_RDMA_WRITE_MIDDLE, 5001, b"E" * 256)   # a MIDDLE of no WRITE: dropped
    send(O.RC_SEND_ONLY, 5002, b"F")                 # RC opcode to a UC QP: dropped
    wb = b.poll(cb)
    assert [(w["wr_id"], w["byte_len"]) for w in wb] == [(100, 7)]
    assert mb.buf[:7] == b"D" * 7
    assert qb.responder.epsn == 5002
    assert b.dev.counters["rx_drop_wrong_transport"] == 1
    assert qb.counters["uc_bad_opcode_seq"] == 1
    assert b.dev.dp.ntx == 0 and not b.dev.tx                  # nothing is ever answered


def test_abandoned_wqe_flushes_first_on_error(pair):
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    _recv_all(b, qb, mb, 3)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 1000)])
    run(a, b, net=Wire(lambda pkt, n: pkt.psn == 102))
    assert b.poll(cb) == [] and qb.dp.recv_held
    qb.modify(M.IBV_QP_STATE, dict(qp_state=abi.IBV_QPS_ERR), b.now)
    wb = b.poll(cb)
    assert [(w["wr_id"], w["status"]) for w in wb] == [
        (100, S.IBV_WC_WR_FLUSH_ERR), (101, S.IBV_WC_WR_FLUSH_ERR),
        (102, S.IBV_WC_WR_FLUSH_ERR)]


def test_no_receive_wqe_drops_silently(pair):
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 600)])       # no WQE: dropped, no RNR
    run(a, b)
    assert qb.counters["uc_no_recv_wqe"] == 1 and qb.state == abi.IBV_QPS_RTS
    assert qb.counters["uc_dropped_pkts"] == 3
    _recv_all(b, qb, mb, 1)
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 600)])
    run(a, b)
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(100, 600)]


def test_bad_rkey_and_too_long_send_drop_the_message_only(pair):
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    b.post_recv(qb, 100, [mb.sge(0, 100)])
    b.post_recv(qb, 101, [mb.sge(4096, 4096)])
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 600)], rkey=mb.rkey ^ 0x80,
                raddr=mb.iova)
    a.post_send(qa, 2, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 600)], rkey=mb.rkey,
                raddr=mb.iova + (1 << 16) - 10)                 # out of bounds
    a.post_send(qa, 3, abi.IBV_WR_SEND, [ma.sge(0, 600)])       # longer than WQE 100
    a.post_send(qa, 4, abi.IBV_WR_SEND, [ma.sge(0, 50)])
    assert all(w["status"] == S.IBV_WC_SUCCESS for w in a.poll(ca))   # nobody tells it
    run(a, b)
    wb = b.poll(cb)
    assert [(w["wr_id"], w["status"]) for w in wb] == [
        (100, S.IBV_WC_LOC_LEN_ERR), (101, S.IBV_WC_SUCCESS)]
    assert qb.counters["rcvd_access_err"] == 2
    assert qa.state == qb.state == abi.IBV_QPS_RTS


@pytest.mark.parametrize("opcode", [abi.IBV_WR_RDMA_READ, abi.IBV_WR_ATOMIC_FETCH_AND_ADD,
                                    abi.IBV_WR_ATOMIC_CMP_AND_SWP])
def test_read_and_atomic_wqes_fail_locally(pair, opcode):
    """A READ or atomic in a UC send queue (written to the ring, past the client's check)
    completes with IBV_WC_LOC_QP_OP_ERR and the QP fails, as rxe does; later WRs flush."""
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 8)])
    a.post_send(qa, 2, opcode, [ma.sge(0, 8)], rkey=mb.rkey, raddr=mb.iova)
    a.post_send(qa, 3, abi.IBV_WR_SEND, [ma.sge(0, 8)])
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, S.IBV_WC_SUCCESS), (2, S.IBV_WC_LOC_QP_OP_ERR), (3, S.IBV_WC_WR_FLUSH_ERR)]
    assert qa.state == abi.IBV_QPS_ERR
    wire = Wire()
    run(a, b, net=wire)
    assert [x[1] for x in wire.seen] == [op.Opcode.UC_SEND_ONLY]    # only the first SEND


@pytest.mark.parametrize("state, mask, attr", [
    (abi.IBV_QPS_RTR, M.IBV_QP_MAX_DEST_RD_ATOMIC, dict(max_dest_rd_atomic=4)),
    (abi.IBV_QPS_RTR, M.IBV_QP_MIN_RNR_TIMER, dict(min_rnr_timer=1)),
    (abi.IBV_QPS_RTS, M.IBV_QP_TIMEOUT, dict(timeout=14)),
    (abi.IBV_QPS_RTS, M.IBV_QP_RETRY_CNT, dict(retry_cnt=7)),
    (abi.IBV_QPS_RTS, M.IBV_QP_RNR_RETRY, dict(rnr_retry=7)),
    (abi.IBV_QPS_RTS, M.IBV_QP_MAX_QP_RD_ATOMIC, dict(max_rd_atomic=4)),
])
def test_rc_only_attributes_refused(state, mask, attr):
    a = Host("127.0.0.1")
    q = a.qp(a.cq(), qp_type=abi.IBV_QPT_UC)
    q.modify(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
             dict(qp_state=abi.IBV_QPS_INIT, pkey_index=0, port_num=1, qp_access_flags=0), 0)
    ah = dict(port_num=1, is_global=1, grh=dict(dgid=roce.ipv4_mapped_gid("127.0.0.2"),
                                                sgid_index=0))
    rtr = dict(qp_state=abi.IBV_QPS_RTR, ah_attr=ah, path_mtu=abi.IBV_MTU_1024,
               dest_qp_num=0x12, rq_psn=0)
    rtr_mask = M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN \
        | M.IBV_QP_RQ_PSN
    if state == abi.IBV_QPS_RTS:
        q.modify(rtr_mask, rtr, 0)
        base_mask, base = M.IBV_QP_STATE | M.IBV_QP_SQ_PSN, dict(qp_state=state, sq_psn=0)
    else:
        base_mask, base = rtr_mask, rtr
    with pytest.raises(VerbsError) as ei:
        q.modify(base_mask | mask, {**base, **attr}, 0)
    assert ei.value.code == errno.EINVAL
    assert mask.name in str(ei.value) and "UC QP" in str(ei.value)
    q.modify(base_mask, base, 0)                  # the same without it is fine
    assert q.state == state


def test_in_sequence_bad_last_keeps_wqe_for_the_fast_path(pair):
    """A LAST longer than the MTU (a broken peer) drops its SEND in sequence; the next ONLY,
    in sequence, is taken by the data plane, into the kept receive WQE (recv_held)."""
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    mb = b.mr(1 << 16)
    _recv_all(b, qb, mb, 2, size=4096)

    def send(opcode, psn, payload):
        p = roce.Packet(opcode=opcode, dest_qp=qb.qp_num, psn=psn)
        b.dev.receive(roce.build(p, payload, src_ip=a.dev.ip, dst_ip=b.dev.ip, sport=4791,
                                 dport=4791), a.dev.ip, 4791, b.now)

    O = op.Opcode
    send(O.UC_SEND_FIRST, 200, b"A" * 256)
    send(O.UC_SEND_LAST, 201, b"B" * 300)
    assert qb.dp.recv_held and qb.responder.epsn == 202
    assert qb.counters["uc_bad_request"] == 1
    fast = b.dev.dp.fast_pkts
    send(O.UC_SEND_ONLY, 202, b"C" * 100)
    assert b.dev.dp.fast_pkts == fast + 1 and not qb.dp.recv_held
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(100, 100)]
    assert mb.buf[:256] == b"C" * 100 + b"A" * 156


def test_write_to_a_qp_without_remote_write_is_dropped(pair):
    """UC has no NAK: an RDMA WRITE the responder QP's access flags do not enable is dropped,
    all its packets (rxe's check_op_valid), and the SEND after it still arrives."""
    a, b, ca, cb, qa, qb = pair
    connect_uc(a, qa, b, qb, mtu=abi.IBV_MTU_256, access=abi.IBV_ACCESS_LOCAL_WRITE)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    ma.buf[:1000] = b"\xab" * 1000
    _recv_all(b, qb, mb, 1)
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 1000)], rkey=mb.rkey,
                raddr=mb.iova + 0x8000)                             # PSN 100..103
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 100)])          # PSN 104
    run(a, b)
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(100, 100)]
    assert bytes(mb.buf[0x8000:0x8000 + 1000]) == bytes(1000)
    assert qb.counters["rcvd_op_not_enabled"] == 1 and qb.counters["uc_dropped_pkts"] == 4

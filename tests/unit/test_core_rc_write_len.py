"""RDMA WRITE FIRST/MIDDLE/LAST bookkeeping is one C function (rnic_dp_write) that the fast
path and core/roce/responder.py both call, so the two cannot decide differently. They once
did: a WRITE FIRST whose RETH DMA length is one path MTU was left to core/ by the fast path,
and core/ then completed the message with a LAST of 0 bytes. IBTA 9.7.7.1 (and rxe): a LAST
carries 1 to PMTU bytes and no packet more than the RETH leaves, so that message ends in NAK
Invalid Request at its next packet; a FIRST of less than one PMTU at the FIRST itself.
Each sequence is replayed with the fast path on and off: same answers, same memory."""
import pytest
import roce_peer as rp
from rc_harness import Host, connect_to
from test_core_rc_edges import NAK_INVALID_REQUEST, PEER, drain, responder, send_from_peer

from rnicd.wire import abi, roce
from rnicd.wire import opcodes as op

MTU = 1024
PSN = 0x4C8
BODY = bytes(range(256)) * 4        # one MTU


def replay(fast: bool, packets):
    """Send (opcode, payload, dma_len or None) from the peer to a fresh responder; return its
    answers (opcode, PSN, AETH syndrome), QP state, counters of interest and memory."""
    b, cq, qb, mr = responder(mtu=abi.IBV_MTU_1024, mr_size=1 << 16)
    out = []
    for i, (opcode, payload, dma_len) in enumerate(packets):
        qb.dp.fast = int(fast and qb.state == abi.IBV_QPS_RTS)
        body = (rp.reth(mr.iova, mr.rkey, dma_len) if dma_len is not None else b"") + payload
        send_from_peer(b, rp.request(opcode, qb.qp_num, PSN + i, PEER, b.dev.ip, rp.ROCE_PORT,
                                     body))
        out += [(p["op"], p["psn"], p["aeth"][0]) for p in drain(b)]
    # the fast path took the FIRST (and decided the same) exactly when it was on
    assert (b.dev.dp.fast_pkts > 0) == (fast and out[0][2] == 0x1F)
    return out, qb.state, qb.dp.msn, bytes(mr.buf[:3 * MTU])


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "slow_path"])
def test_write_first_of_exactly_one_mtu_then_empty_last_is_invalid(fast):
    out, state, msn, mem = replay(fast, [(rp.WRITE_FIRST, BODY, MTU), (rp.WRITE_LAST, b"", None)])
    # the FIRST is acknowledged (AckReq), the empty LAST is a length error (9.7.7.1)
    assert out == [(rp.ACK, PSN, 0x1F), (rp.ACK, PSN + 1, NAK_INVALID_REQUEST)]
    assert state == abi.IBV_QPS_ERR and msn == 0
    assert mem[:MTU] == BODY        # the FIRST was placed, as rxe places it


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "slow_path"])
def test_write_first_of_exactly_one_mtu_then_middle_is_invalid(fast):
    out, state, msn, _ = replay(fast, [(rp.WRITE_FIRST, BODY, MTU), (rp.WRITE_MIDDLE, BODY, None)])
    assert out == [(rp.ACK, PSN, 0x1F), (rp.ACK, PSN + 1, NAK_INVALID_REQUEST)]
    assert state == abi.IBV_QPS_ERR and msn == 0


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "slow_path"])
def test_write_first_of_less_than_one_mtu_is_invalid_at_once(fast):
    out, state, msn, mem = replay(fast, [(rp.WRITE_FIRST, BODY, MTU - 4)])
    assert out == [(rp.ACK, PSN, NAK_INVALID_REQUEST)]
    assert state == abi.IBV_QPS_ERR and mem == bytes(3 * MTU)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "slow_path"])
def test_write_of_one_mtu_plus_a_byte_completes(fast):
    out, state, msn, mem = replay(fast, [(rp.WRITE_FIRST, BODY, MTU + 4),
                                         (rp.WRITE_LAST, b"tail", None)])
    assert out == [(rp.ACK, PSN, 0x1F), (rp.ACK, PSN + 1, 0x1F)]
    assert state == abi.IBV_QPS_RTS and msn == 1
    assert mem[:MTU + 4] == BODY + b"tail"


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "slow_path"])
def test_send_last_of_zero_bytes_is_invalid(fast):
    """The same length rule (rnic_dp_len_check) for SEND: a LAST carries 1 to PMTU bytes."""
    b, cq, qb, mr = responder(mtu=abi.IBV_MTU_1024, mr_size=1 << 16)
    b.post_recv(qb, 7, [mr.sge(0, 4 * MTU)])
    out = []
    for i, (opcode, payload) in enumerate([(0x00, BODY), (0x02, b"")]):    # FIRST, LAST
        qb.dp.fast = int(fast and qb.state == abi.IBV_QPS_RTS)
        send_from_peer(b, rp.request(opcode, qb.qp_num, PSN + i, PEER, b.dev.ip, rp.ROCE_PORT,
                                     payload))
        out += [(p["op"], p["psn"], p["aeth"][0]) for p in drain(b)]
    assert out == [(rp.ACK, PSN, 0x1F), (rp.ACK, PSN + 1, NAK_INVALID_REQUEST)]
    assert qb.state == abi.IBV_QPS_ERR
    wcs = b.poll(cq)
    assert wcs and wcs[0]["wr_id"] == 7 and wcs[0]["status"] == abi.WCStatus.IBV_WC_REM_INV_REQ_ERR


def test_solicited_write_with_immediate_sets_se_on_its_last_packet():
    """IBTA 9.3.1 (rxe alike): SE goes on the last packet of a solicited SEND or RDMA WRITE
    with immediate; the data plane once set it for SENDs only, so a responder's CQ armed for
    solicited completions never woke for a WRITE with immediate."""
    a = Host("127.0.0.1")
    qa = a.qp(a.cq())
    connect_to(a, qa, PEER, 0x99, mtu=abi.IBV_MTU_1024)
    m = a.mr(4096)
    sol = abi.IBV_SEND_SIGNALED | abi.IBV_SEND_SOLICITED
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE_WITH_IMM, [m.sge(0, 1500)], imm=7, flags=sol,
                rkey=0x1234, raddr=0x10000)
    a.post_send(qa, 2, abi.IBV_WR_RDMA_WRITE, [m.sge(0, 100)], flags=sol, rkey=0x1234,
                raddr=0x10000)
    a.post_send(qa, 3, abi.IBV_WR_SEND, [m.sge(0, 100)], flags=sol)
    pkts = [roce.parse(d, check_icrc=False) for d, _addr in a.dev.take_tx()]
    assert [(p.opcode, p.se) for p in pkts] == [
        (op.Opcode.RC_RDMA_WRITE_FIRST, False),
        (op.Opcode.RC_RDMA_WRITE_LAST_WITH_IMMEDIATE, True),
        (op.Opcode.RC_RDMA_WRITE_ONLY, False),          # no immediate: no event to solicit
        (op.Opcode.RC_SEND_ONLY, True)]

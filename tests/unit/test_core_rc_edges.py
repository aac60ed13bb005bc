"""RC edge cases found by fuzzing and by an independent RoCEv2 stack (issue 24), sans-I/O:
requests come from a test peer (scapy builds them, roce_peer checks the answers) or from a
client that writes its rings directly, never from rnicd's own requester where that would
hide the bug."""
import mmap
import random
import zlib

import pytest
import roce_peer as rp
from rc_harness import Host, connect, connect_to, run, run_batched

from rnicd import native
from rnicd.wire import abi, roce
from rnicd.wire import opcodes as op

S = abi.WCStatus
PEER, PEER_QPN = "127.0.0.9", 0x99
NAK_INVALID_REQUEST = 0x61      # AETH: NAK, code 1 (IBTA 9.7.5.2.4)


def lazy(size):
    """Private anonymous memory: untouched pages read as the zero page and cost nothing."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def responder(mtu=abi.IBV_MTU_1024, mr_size=1 << 22, buf=None):
    b = Host("127.0.0.2")
    cq = b.cq(256)
    qb = b.qp(cq)
    connect_to(b, qb, PEER, PEER_QPN, mtu=mtu, peer_psn=0x4C8)
    return b, cq, qb, b.mr(mr_size, buf=buf)


def send_from_peer(b, pkt):
    b.dev.receive(pkt, PEER, rp.ROCE_PORT, b.now)
    b.dev.end_batch(b.now)


def drain(b):
    """Every datagram b sends until it is idle, parsed, as the transmit side drains."""
    out = []
    while True:
        for data, (ip, _port) in b.dev.take_tx():
            assert ip == PEER
            out.append(rp.parse_response(data, b.dev.ip, PEER))
        if not b.dev.produce(b.now) and not b.dev.dp.ntx and not b.dev.tx:
            return out


# ---- item 3: one PSN distance --------------------------------------------------------------
def oracle_psn_diff(a, b):
    d = (a - b) % (1 << 24)
    return d - (1 << 24) if d > 1 << 23 else d      # (-2^23, 2^23]


def test_c_and_python_agree_on_psn_distance_everywhere():
    lib = native.lib
    assert roce.psn_diff is lib.rnic_psn_diff        # one definition, in C
    edges = [0, 1, 2, (1 << 23) - 2, (1 << 23) - 1, 1 << 23, (1 << 23) + 1, (1 << 23) + 2,
             (1 << 24) - 2, (1 << 24) - 1]
    rng = random.Random(5)
    bases = edges + [rng.randrange(1 << 24) for _ in range(6)]
    for b in bases:
        for d in edges + list(range(0, 1 << 24, 4093)):
            a = (b + d) % (1 << 24)
            assert lib.rnic_psn_diff(a, b) == oracle_psn_diff(a, b), (a, b)


@pytest.mark.slow
def test_send_of_2_31_bytes_at_mtu_256_completes():
    """2^23 packets: the requester once fetched more WQEs behind it and refused its ACKs."""
    n = 1 << 31
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(64), b.cq(64)
    qa, qb = a.qp(ca), b.qp(cb)
    connect(a, qa, b, qb, mtu=abi.IBV_MTU_256, psn_a=(1 << 24) - 5)   # PSNs wrap too
    ma, mb = a.mr(n, buf=lazy(n)), b.mr(n, buf=lazy(n))
    rng = random.Random(7)
    marks = [0, 4096 * 1000, n // 2 - 100, n - 4096]
    for off in marks:
        ma.buf[off:off + 4096] = rng.randbytes(4096)
    b.post_recv(qb, 1, [mb.sge(0, n)])
    b.post_recv(qb, 2, [mb.sge(0, 64)])
    a.post_send(qa, 10, abi.IBV_WR_SEND, [ma.sge(0, n)])
    a.post_send(qa, 11, abi.IBV_WR_SEND, [ma.sge(0, 64)])            # fetched behind it
    run_batched(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(10, S.IBV_WC_SUCCESS),
                                                                (11, S.IBV_WC_SUCCESS)]
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(1, n), (2, 64)]
    for off in marks:
        assert mb.buf[off:off + 4096] == ma.buf[off:off + 4096]
    assert zlib.crc32(ma.buf) == zlib.crc32(mb.buf)
    assert b.dev.counter_snapshot()["slow_path_events"] < 10   # all in the data plane


# ---- items 1 and 2: READ requests from a peer ----------------------------------------------
def read_request(b, qb, mr, length, psn=0x4C8, off=0):
    return rp.request(rp.READ_REQUEST, qb.qp_num, psn, PEER, b.dev.ip, rp.ROCE_PORT,
                      rp.reth(mr.iova + off, mr.rkey, length))


@pytest.mark.parametrize("length", [(1 << 32) - 512, (1 << 31) + 1])
def test_read_longer_than_2_31_is_nak_invalid_request(length):
    """Regression: a DMA length above 2^32 - MTU wrapped the packet count to 0 and, with an
    MR of 4 GiB, the READ was accepted, never answered and MSN moved on."""
    b, cq, qb, mr = responder(mr_size=(1 << 32) + 4096, buf=lazy((1 << 32) + 4096))
    send_from_peer(b, read_request(b, qb, mr, length))
    out = drain(b)
    assert [(p["op"], p["psn"], p["aeth"][0]) for p in out] == [
        (rp.ACK, 0x4C8, NAK_INVALID_REQUEST)]
    assert qb.state == abi.IBV_QPS_ERR
    assert qb.dp.epsn == 0x4C8 and qb.dp.msn == 0


def check_read_stream(out, mr, psn, length, mtu=1024, msn=0):
    """The responses of one READ: consecutive PSNs, FIRST MIDDLE.. LAST (or ONLY), one MTU
    each but the last, the region's bytes, AETH with the MSN on all but MIDDLE."""
    n = max(1, -(-length // mtu))
    assert len(out) == n
    crc = 0
    for k, p in enumerate(out):
        want = (rp.READ_ONLY if n == 1 else rp.READ_FIRST if k == 0
                else rp.READ_LAST if k == n - 1 else rp.READ_MIDDLE)
        assert (p["op"], p["psn"]) == (want, (psn + k) & 0xFFFFFF), k
        assert len(p["payload"]) == min(mtu, length - k * mtu)
        assert p["aeth"] is None if want == rp.READ_MIDDLE else p["aeth"] == (0x1F, msn)
        crc = zlib.crc32(p["payload"], crc)
    assert crc == zlib.crc32(memoryview(mr.buf)[:length])


def test_read_of_2_mib_is_answered_in_order_and_a_later_ack_waits():
    """Regression: 2048 responses exceed the 1024-packet transmit buffer; the READ was
    refused and ePSN went backwards. Now they go out as the buffer drains, and the ACK of a
    WRITE that follows comes after them (it acknowledges every earlier PSN)."""
    n = 2 << 20
    b, cq, qb, mr = responder(mr_size=n + 4096)
    mr.buf[:] = random.Random(2).randbytes(len(mr.buf))
    psn = 0x4C8
    send_from_peer(b, read_request(b, qb, mr, n, psn))
    wpsn = psn + 2048
    send_from_peer(b, rp.request(rp.WRITE_ONLY, qb.qp_num, wpsn, PEER, b.dev.ip, rp.ROCE_PORT,
                                 rp.reth(mr.iova + n, mr.rkey, 8) + b"written!"))
    out = drain(b)
    check_read_stream(out[:2048], mr, psn, n)
    assert [(p["op"], p["psn"], p["aeth"]) for p in out[2048:]] == [(rp.ACK, wpsn, (0x1F, 2))]
    assert mr.buf[n:n + 8] == b"written!"
    assert qb.dp.epsn == wpsn + 1 and qb.dp.msn == 2 and qb.state == abi.IBV_QPS_RTS


@pytest.mark.slow
def test_read_of_2_31_minus_1_bytes_is_answered_completely_in_order():
    n = (1 << 31) - 1
    b, cq, qb, mr = responder(mr_size=n + 1, buf=lazy(n + 1))
    rng = random.Random(3)
    for off in (0, 1 << 20, n // 2, n + 1 - 4096):
        mr.buf[off:off + 4096] = rng.randbytes(4096)
    send_from_peer(b, read_request(b, qb, mr, n))
    psn, count, crc, total = 0x4C8, 0, 0, 1 << 21
    dp = b.dev.dp
    while True:      # check in place, as the transmit side drains (2^21 packets)
        for i in range(dp.ntx):
            pkt = native.ffi.buffer(dp.tx_bufs + i * dp.tx_buf_size, dp.tx_lens[i])
            p = rp.parse_response(pkt, b.dev.ip, PEER)
            want = (rp.READ_FIRST if count == 0 else rp.READ_LAST if count == total - 1
                    else rp.READ_MIDDLE)
            assert (p["op"], p["psn"]) == (want, (psn + count) & 0xFFFFFF)
            crc = zlib.crc32(p["payload"], crc)
            count += 1
        dp.ntx = 0
        assert not b.dev.tx
        if not b.dev.produce(b.now) and not dp.ntx:
            break
    assert count == total and crc == zlib.crc32(memoryview(mr.buf)[:n])
    assert qb.dp.epsn == (psn + total) & 0xFFFFFF and qb.dp.msn == 1


# ---- item 7: the responder's check order ---------------------------------------------------
def test_read_opcode_inside_a_write_is_an_opcode_sequence_error():
    """Conformance case of an independent stack: WRITE FIRST, then a packet carrying the
    READ request opcode and the WRITE's payload. The opcode sequence check comes before the
    length check (IBTA 9.9.3): NAK Invalid Request and the error state, not a silent drop."""
    b, cq, qb, mr = responder()
    body = bytes(range(256)) * 4
    send_from_peer(b, rp.request(rp.WRITE_FIRST, qb.qp_num, 0x4C8, PEER, b.dev.ip, rp.ROCE_PORT,
                                 rp.reth(mr.iova, mr.rkey, 2048) + body, ackreq=False))
    pkt = rp.request(rp.READ_REQUEST, qb.qp_num, 0x4C9, PEER, b.dev.ip, rp.ROCE_PORT, body)
    send_from_peer(b, pkt)
    out = drain(b)
    assert [(p["op"], p["psn"], p["aeth"][0]) for p in out] == [
        (rp.ACK, 0x4C9, NAK_INVALID_REQUEST)]
    assert qb.state == abi.IBV_QPS_ERR
    snap = b.dev.counter_snapshot()
    assert not any(k.startswith("rx_drop_") for k in snap), snap


def test_bad_length_with_a_bad_psn_is_a_sequence_nak():
    """PSN first: the same malformed READ ahead of ePSN gets a sequence NAK, the QP lives."""
    b, cq, qb, mr = responder()
    send_from_peer(b, rp.request(rp.READ_REQUEST, qb.qp_num, 0x4CA, PEER, b.dev.ip,
                                 rp.ROCE_PORT, b"x" * 40))
    out = drain(b)
    assert [(p["op"], p["psn"], p["aeth"][0]) for p in out] == [(rp.ACK, 0x4C8, 0x60)]
    assert qb.state == abi.IBV_QPS_RTS


# ---- items 4, 5, 6: a client that writes its ring directly ---------------------------------
@pytest.fixture
def pair():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(256), b.cq(256)
    return a, b, ca, cb


def test_producer_index_moved_back_fails_the_qp(pair):
    """Regression: prod set back below the fetch position ran the fetch around the ring,
    overwrote in-flight descriptors and wedged the QP in RTS. Now: QP_FATAL, flush."""
    a, b, ca, cb = pair
    qa, qb = a.qp(ca, max_send_wr=4), b.qp(cb)
    connect(a, qa, b, qb)
    ma, mb = a.mr(4096), b.mr(4096)
    for i in range(4):
        b.post_recv(qb, i, [mb.sge()])
        a.post_send(qa, i, abi.IBV_WR_SEND, [ma.sge(0, 100)])
    assert qa.requester.dp.sq_next == 4
    qa.sq_ring.store_prod(2)                         # the client breaks its ring
    run(a, b)
    assert qa.state == abi.IBV_QPS_ERR
    assert {"type": abi.IBV_EVENT_QP_FATAL, "qp_num": qa.qp_num} in [e for _o, e in a.dev.events]
    assert a.dev.counters["sq_ring_corrupt"] >= 1
    assert a.dev.counters["internal_psn_error"] == 0
    wcs = a.poll(ca)
    assert sorted(w["wr_id"] for w in wcs) == [0, 1, 2, 3]
    assert qa.requester.dp.sq_next == 4 and qa.dp.sq_head == 4


def test_zero_max_send_sge_refuses_a_wqe_with_an_sge(pair):
    """Regression: the data plane checked max(1, max_send_sge) and sent it."""
    a, b, ca, cb = pair
    qa, qb = a.qp(ca, sge=0), b.qp(cb)
    connect(a, qa, b, qb)
    ma, mb = a.mr(4096), b.mr(4096)
    b.post_recv(qb, 7, [mb.sge(0, 4096)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 100)])     # num_sge 1 > cap 0
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, S.IBV_WC_LOC_LEN_ERR)]
    assert b.poll(cb) == [] and qa.state == abi.IBV_QPS_ERR
    a.post_send(qa, 2, abi.IBV_WR_SEND, inline=b"inline is fine", flags=abi.IBV_SEND_SIGNALED)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(2, S.IBV_WC_WR_FLUSH_ERR)]


def test_sq_entry_rewritten_after_fetch_changes_nothing(pair):
    """The data plane copies a WQE out of the ring once and uses only the copy: a client
    that rewrites the slot while the WQE is in flight cannot change what is (re)sent."""
    a, b, ca, cb = pair
    qa, qb = a.qp(ca), b.qp(cb)
    connect(a, qa, b, qb, timeout=8)
    ma, mb = a.mr(8192), b.mr(8192)
    ma.buf[:3000] = random.Random(4).randbytes(3000)
    b.post_recv(qb, 7, [mb.sge(0, 8192)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 3000)])
    a.dev.take_tx()                                  # the first transmission is lost
    w = qa.sq_ring.send_wqe(0)
    w.num_sge, w.opcode = 1000, 99
    w.sg[0].lkey, w.sg[0].length, w.sg[0].addr = 0xDEAD00, 1 << 30, 0
    run(a, b)                                        # the retransmission uses the copy
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, S.IBV_WC_SUCCESS)]
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(7, 3000)]
    assert mb.buf[:3000] == ma.buf[:3000]


def test_recv_entry_with_more_sges_than_its_slot_is_not_read_past_it(pair):
    a, b, ca, cb = pair
    qa, qb = a.qp(ca), b.qp(cb, sge=1)
    connect(a, qa, b, qb)
    ma, mb = a.mr(4096), b.mr(4096)
    b.post_recv(qb, 7, [mb.sge(0, 4096)])
    qb.rq.ring.recv_wqe(0).num_sge = 1 << 20         # the client breaks the entry
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 100)])
    run(a, b)
    assert qb.dp.fast_pkts == 0                      # the data plane left it to core/
    # core/ asks the same C check, which refuses the count: the WQE completes in error
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [(7, S.IBV_WC_LOC_LEN_ERR)]
    assert qb.state == abi.IBV_QPS_ERR


@pytest.mark.parametrize("cap,num_sge", [(0, 1), (1, 2), (2, 3)])
def test_recv_wqe_with_more_sges_than_the_cap_fails_on_both_planes(pair, cap, num_sge):
    """Regression: the data plane checked max(1, cap) and core/ cut the list down to the cap
    without a word; now one C check with the real cap decides, on both paths."""
    a, b, ca, cb = pair
    qa, qb = a.qp(ca), b.qp(cb, sge=cap)
    connect(a, qa, b, qb)
    ma, mb = a.mr(4096), b.mr(4096)
    b.post_recv(qb, 7, [mb.sge(i * 100, 100) for i in range(min(num_sge, max(cap, 1)))])
    qb.rq.ring.recv_wqe(0).num_sge = num_sge
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 10)])
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [(7, S.IBV_WC_LOC_LEN_ERR)]
    assert mb.buf[:300] == bytes(300) and qb.state == abi.IBV_QPS_ERR


def test_recv_wqe_without_sges_takes_a_zero_length_send_with_a_zero_cap(pair):
    a, b, ca, cb = pair
    qa, qb = a.qp(ca), b.qp(cb, sge=0)
    connect(a, qa, b, qb)
    ma = a.mr(4096)
    b.post_recv(qb, 7, [])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 0)])
    run(a, b)
    assert [(w["wr_id"], w["status"], w["byte_len"]) for w in b.poll(cb)] == [
        (7, S.IBV_WC_SUCCESS, 0)]


def test_send_being_received_flushes_its_wqe_on_error():
    """A QP that fails while a SEND is half received: that receive WQE (taken from the
    ring) completes with IBV_WC_WR_FLUSH_ERR before the ones behind it (IBTA 10.8.3)."""
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa, qb = a.qp(ca), b.qp(cb)
    connect(a, qa, b, qb, mtu=abi.IBV_MTU_256)
    mb = b.mr(1 << 16)
    for i in range(2):
        b.post_recv(qb, 100 + i, [mb.sge(i * 4096, 4096)])
    p = roce.Packet(opcode=op.Opcode.RC_SEND_FIRST, dest_qp=qb.qp_num, psn=100)
    b.dev.receive(roce.build(p, b"x" * 256, src_ip=a.dev.ip, dst_ip=b.dev.ip, sport=4791,
                             dport=4791), a.dev.ip, 4791, b.now)
    assert b.poll(cb) == []
    qb.modify(abi.QPAttrMask.IBV_QP_STATE, dict(qp_state=abi.IBV_QPS_ERR), b.now)
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [
        (100, abi.IBV_WC_WR_FLUSH_ERR), (101, abi.IBV_WC_WR_FLUSH_ERR)]

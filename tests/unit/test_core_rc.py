"""The RC protocol core, sans-I/O: two devices joined by an in-memory network (rc_harness)."""
import errno
import random

import pytest
from rc_harness import ALL_ACCESS, Host, connect, run

from rnicd.wire import abi

S = abi.WCStatus


@pytest.fixture
def pair():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(4096), b.cq(4096)
    qa = a.qp(ca, max_send_wr=256, max_recv_wr=256)
    qb = b.qp(cb, max_send_wr=256, max_recv_wr=256)
    return a, b, ca, cb, qa, qb


@pytest.mark.parametrize("mtu", [abi.IBV_MTU_256, abi.IBV_MTU_512, abi.IBV_MTU_1024,
                                 abi.IBV_MTU_2048, abi.IBV_MTU_4096])
def test_every_opcode_with_wc_fields(pair, mtu):
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, mtu=mtu)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    ma.buf[:6000] = random.Random(1).randbytes(6000)
    mb.buf[0:8] = (40).to_bytes(8, "little")
    for i in range(4):
        b.post_recv(qb, 100 + i, [mb.sge(10000 + i * 8192, 8192)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 3000), ma.sge(3000, 3000)])
    a.post_send(qa, 2, abi.IBV_WR_SEND_WITH_IMM, [ma.sge(0, 100)], imm=0xDEADBEEF)
    a.post_send(qa, 3, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 6000)], rkey=mb.rkey,
                raddr=mb.iova + 40000)
    a.post_send(qa, 4, abi.IBV_WR_RDMA_WRITE_WITH_IMM, [ma.sge(0, 10)], rkey=mb.rkey,
                raddr=mb.iova + 50000, imm=7)
    a.post_send(qa, 5, abi.IBV_WR_RDMA_READ, [ma.sge(20000, 6000)], rkey=mb.rkey,
                raddr=mb.iova + 40000)
    a.post_send(qa, 6, abi.IBV_WR_ATOMIC_CMP_AND_SWP, [ma.sge(30000, 8)], rkey=mb.rkey,
                raddr=mb.iova, compare_add=40, swap=99)
    a.post_send(qa, 7, abi.IBV_WR_ATOMIC_FETCH_AND_ADD, [ma.sge(30008, 8)], rkey=mb.rkey,
                raddr=mb.iova, compare_add=1)
    a.post_send(qa, 8, abi.IBV_WR_SEND, inline=b"inline!", flags=abi.IBV_SEND_SIGNALED)
    a.post_send(qa, 9, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 16)], rkey=mb.rkey,
                raddr=mb.iova + 60000, flags=0)          # unsignaled: no completion
    run(a, b)
    wa = a.poll(ca)
    assert [w["wr_id"] for w in wa] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(w["status"] == S.IBV_WC_SUCCESS for w in wa)
    assert [w["opcode"] for w in wa] == [abi.IBV_WC_SEND, abi.IBV_WC_SEND, abi.IBV_WC_RDMA_WRITE,
                                         abi.IBV_WC_RDMA_WRITE, abi.IBV_WC_RDMA_READ,
                                         abi.IBV_WC_COMP_SWAP, abi.IBV_WC_FETCH_ADD,
                                         abi.IBV_WC_SEND]
    assert wa[4]["byte_len"] == 6000
    wb = b.poll(cb)
    assert [(w["wr_id"], w["opcode"], w["byte_len"]) for w in wb] == [
        (100, abi.IBV_WC_RECV, 6000), (101, abi.IBV_WC_RECV, 100),
        (102, abi.IBV_WC_RECV_RDMA_WITH_IMM, 10), (103, abi.IBV_WC_RECV, 7)]
    assert wb[1]["imm_data"] == 0xDEADBEEF and wb[1]["wc_flags"] & abi.IBV_WC_WITH_IMM
    assert wb[2]["imm_data"] == 7
    assert mb.buf[10000:16000] == ma.buf[:6000]
    assert mb.buf[40000:46000] == ma.buf[:6000]
    assert ma.buf[20000:26000] == ma.buf[:6000]
    assert int.from_bytes(ma.buf[30000:30008], "little") == 40      # CAS saw 40, swapped 99
    assert int.from_bytes(ma.buf[30008:30016], "little") == 99      # FAA saw 99
    assert int.from_bytes(mb.buf[0:8], "little") == 100
    assert qa.sq_ring.load_cons() == 9                               # every slot retired


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_network_delivers_everything(pair, seed):
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, timeout=8)
    rng = random.Random(seed)
    held = {}

    def net(src, data):      # 5% drop, 1% duplicate, 2% reorder, each direction
        r = rng.random()
        out = [] if r < 0.05 else [data, data] if r < 0.06 else [data]
        q = held.setdefault(src.dev.ip, [])
        if out and rng.random() < 0.02:
            q.append(out.pop())
        elif q and rng.random() < 0.5:
            out.append(q.pop(0))
        return out

    n, ch = 1 << 19, 16384
    ma, mb, mc = a.mr(n), b.mr(n), a.mr(n, iova=0x4000000)
    ma.buf[:] = rng.randbytes(n)
    half = n // ch // 2
    for i in range(half):
        b.post_recv(qb, i, [mb.sge(n // 2 + i * ch, ch)])
        a.post_send(qa, i, abi.IBV_WR_RDMA_WRITE, [ma.sge(i * ch, ch)], rkey=mb.rkey,
                    raddr=mb.iova + i * ch, ring=False)
        a.post_send(qa, 100 + i, abi.IBV_WR_SEND, [ma.sge(n // 2 + i * ch, ch)], ring=False)
    a.dev.doorbell(a.s, a.now)
    run(a, b, net=net, max_time=1000)
    for i in range(n // ch):
        a.post_send(qa, 500 + i, abi.IBV_WR_RDMA_READ, [mc.sge(i * ch, ch)], rkey=mb.rkey,
                    raddr=mb.iova + i * ch, ring=False)
    a.dev.doorbell(a.s, a.now)
    run(a, b, net=net, max_time=1000)
    wa, wb = a.poll(ca), b.poll(cb)
    assert len(wa) == 4 * half and all(w["status"] == S.IBV_WC_SUCCESS for w in wa)
    assert len(wb) == half and all(w["status"] == S.IBV_WC_SUCCESS for w in wb)
    assert mb.buf == ma.buf and mc.buf == ma.buf
    assert a.dev.counter_snapshot()["retransmitted_pkts"] > 0
    assert b.dev.counter_snapshot()["out_of_seq_request"] > 0


@pytest.mark.parametrize("case", ["bad_rkey", "out_of_bounds", "no_remote_write"])
def test_remote_access_errors_then_flush(pair, case):
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb)
    ma = a.mr(4096)
    access = abi.IBV_ACCESS_LOCAL_WRITE | (0 if case == "no_remote_write"
                                           else abi.IBV_ACCESS_REMOTE_WRITE)
    mb = b.mr(4096, access=access)
    rkey = mb.rkey ^ 0x55 if case == "bad_rkey" else mb.rkey
    raddr = mb.iova + (4000 if case == "out_of_bounds" else 0)
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 200)], rkey=rkey, raddr=raddr)
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 10)], flags=0)
    a.post_send(qa, 3, abi.IBV_WR_RDMA_READ, [ma.sge(0, 10)], rkey=mb.rkey, raddr=mb.iova)
    run(a, b)
    wa = a.poll(ca)
    assert [(w["wr_id"], w["status"]) for w in wa] == [
        (1, S.IBV_WC_REM_ACCESS_ERR), (2, S.IBV_WC_WR_FLUSH_ERR), (3, S.IBV_WC_WR_FLUSH_ERR)]
    assert qa.state == abi.IBV_QPS_ERR and qb.state == abi.IBV_QPS_ERR
    a.post_send(qa, 4, abi.IBV_WR_SEND, [ma.sge(0, 10)])     # posting in ERR flushes too
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(4, S.IBV_WC_WR_FLUSH_ERR)]


def test_lost_nak_is_recovered_by_the_probe_not_the_ack_timeout(pair):
    """A lost packet whose sequence NAK is lost too: the responder drops what follows, and
    nothing comes back. The probe (2 smoothed round trips, at least 250 µs) resends the lost
    packet; the responder takes it and nothing after it, so the requester goes back N from
    there, long before the 67 ms ACK timeout and without spending a retry
    (docs/architecture.md)."""
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, timeout=14, retry_cnt=1)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 64)], rkey=mb.rkey, raddr=mb.iova)
    run(a, b, tick=1e-5)                        # a round trip is measured
    lost = {"data": 0, "nak": 0}

    def net(src, data):
        if src is a and data[0] == 0x07 and not lost["data"]:     # a WRITE MIDDLE
            lost["data"] = 1
            return []
        if src is b and data[0] == 0x11 and data[12] == 0x60 and not lost["nak"]:
            lost["nak"] = 1                     # the sequence NAK
            return []
        return [data]

    ma.buf[:8192] = random.Random(3).randbytes(8192)
    start = a.now
    a.post_send(qa, 2, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 8192)], rkey=mb.rkey,
                raddr=mb.iova + 4096)
    run(a, b, net=net, tick=1e-5)
    assert lost == {"data": 1, "nak": 1}
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, S.IBV_WC_SUCCESS), (2, S.IBV_WC_SUCCESS)]
    assert mb.buf[4096:4096 + 8192] == ma.buf[:8192]
    c = a.dev.counter_snapshot()
    assert c["early_retransmits"] >= 1 and c.get("timeout_retries", 0) == 0
    assert a.now - start < 0.01                 # the ACK timeout is 67 ms


def _timed_write(a, b, qa, qb, net):
    """One measured round trip, then an 8-packet WRITE (MTU 1024) through `net`."""
    connect(a, qa, b, qb, timeout=14, retry_cnt=1)
    ma, mb = a.mr(1 << 16), b.mr(1 << 16)
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 64)], rkey=mb.rkey, raddr=mb.iova)
    run(a, b, tick=1e-5)
    ma.buf[:8192] = random.Random(5).randbytes(8192)
    base = (a.dev.counter_snapshot(), b.dev.counter_snapshot())
    a.post_send(qa, 2, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 8192)], rkey=mb.rkey,
                raddr=mb.iova + 4096)
    run(a, b, net=net, tick=1e-5)
    assert mb.buf[4096:4096 + 8192] == ma.buf[:8192]
    return [{k: v - was.get(k, 0) for k, v in h.dev.counter_snapshot().items()}
            for h, was in zip((a, b), base, strict=True)]


def test_lost_ack_costs_the_probe_one_packet_not_a_window(pair):
    """The only ACK of a whole message is lost: the probe resends one packet (the oldest
    unacknowledged), the responder acknowledges it as a duplicate, and nothing else is
    resent. Going back N would have resent all 8."""
    a, b, ca, cb, qa, qb = pair
    lost = []

    def net(src, data):
        if src is b and data[0] == 0x11 and not lost:           # the ACK
            lost.append(data)
            return []
        return [data]

    ca_, cb_ = _timed_write(a, b, qa, qb, net)
    assert len(lost) == 1
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, S.IBV_WC_SUCCESS), (2, S.IBV_WC_SUCCESS)]
    assert ca_["early_retransmits"] == 1 and ca_["retransmitted_pkts"] == 1
    assert cb_["duplicate_request"] == 1 and ca_.get("timeout_retries", 0) == 0


def test_a_repeated_nak_for_a_lost_retransmission_is_obeyed(pair):
    """The same packet is lost twice: in the first round and in its retransmission. The
    responder NAKs the gap again when the new round's next packet arrives (its PSN went
    backwards), and the requester goes back at once, with no probe and no timeout."""
    a, b, ca, cb, qa, qb = pair
    drops = []

    def net(src, data):
        if src is a and data[0] == 0x07 and len(drops) < 2 and (
                not drops or data[9:12] == drops[0]):         # the same MIDDLE, twice
            drops.append(data[9:12])
            return []
        return [data]

    ca_, cb_ = _timed_write(a, b, qa, qb, net)
    assert len(drops) == 2
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, S.IBV_WC_SUCCESS), (2, S.IBV_WC_SUCCESS)]
    assert ca_["rcvd_seq_err"] == 2 and ca_["nak_seq_retries"] == 2
    assert ca_.get("early_retransmits", 0) == 0 and ca_.get("timeout_retries", 0) == 0


def test_silent_peer_gives_retry_exceeded(pair):
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, timeout=5, retry_cnt=3)
    ma = a.mr(4096)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 10)])
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 10)])
    run(a, b, net=lambda src, d: [])
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, S.IBV_WC_RETRY_EXC_ERR), (2, S.IBV_WC_WR_FLUSH_ERR)]
    assert a.dev.counter_snapshot()["timeout_retries"] == 3
    assert a.dev.counters["retry_exceeded_err"] == 1


def test_rnr_retry_exceeded_and_rnr_recovery(pair):
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, rnr_retry=2, min_rnr_timer=1)
    ma = a.mr(4096)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 10)])
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, S.IBV_WC_RNR_RETRY_EXC_ERR)]
    assert a.dev.counters["rcvd_rnr_err"] == 3 and b.dev.counters["send_rnr_nak"] == 3


def test_rnr_then_receive_posted_succeeds(pair):
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, rnr_retry=7, min_rnr_timer=14)     # 7 = retry forever
    ma, mb = a.mr(4096), b.mr(4096)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 10)])
    for _ in range(20):                  # let a few RNR NAKs happen, then post the buffer
        for h in (a, b):
            for d, (ip, _) in h.dev.take_tx():
                (b if ip == b.dev.ip else a).dev.receive(d, h.dev.ip, 4791, h.now)
    b.post_recv(qb, 9, [mb.sge(0, 100)])
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, S.IBV_WC_SUCCESS)]
    assert [(w["wr_id"], w["byte_len"]) for w in b.poll(cb)] == [(9, 10)]


def test_srq_shared_by_two_qps_with_limit_event():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    r = b.call("create_srq", pd=b.pd, max_wr=16, max_sge=1, srq_limit=4)
    srq = b.s.srqs[r["srq"]]
    qa1, qa2 = a.qp(ca), a.qp(ca)
    qb1, qb2 = b.qp(cb, srq=srq.handle), b.qp(cb, srq=srq.handle)
    connect(a, qa1, b, qb1)
    connect(a, qa2, b, qb2)
    ma, mb = a.mr(4096), b.mr(1 << 16)
    for i in range(6):
        b.post_recv(srq, 200 + i, [mb.sge(i * 1024, 1024)])
    a.post_send(qa1, 1, abi.IBV_WR_SEND, [ma.sge(0, 5)])
    a.post_send(qa2, 2, abi.IBV_WR_SEND, [ma.sge(0, 7)])
    a.post_send(qa1, 3, abi.IBV_WR_SEND, [ma.sge(0, 9)])
    run(a, b)
    wb = b.poll(cb)
    assert sorted((w["wr_id"], w["byte_len"]) for w in wb) == [(200, 5), (201, 7), (202, 9)]
    assert {w["qp_num"] for w in wb} == {qb1.qp_num, qb2.qp_num}
    events = [ev for _owner, ev in b.dev.events]
    assert {"type": abi.IBV_EVENT_SRQ_LIMIT_REACHED, "srq": srq.handle} in events


def test_malformed_and_unknown_datagrams_are_counted(pair):
    a, b, ca, cb, qa, qb = pair
    rng = random.Random(3)
    for n in range(0, 80):
        b.dev.receive(rng.randbytes(n), "127.0.0.1", 4791, 0.0)
    snap = b.dev.counter_snapshot()
    assert snap["rcvd_pkts"] == snap["slow_path_events"] == 80
    drops = sum(v for k, v in snap.items() if k.startswith("rx_drop_"))
    assert drops == 80


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reissued_read_stays_inside_its_chunk(pair, seed):
    """Regression: a READ re-issued after a lost response once ran past its original
    request's end into a chunk the responder had not seen; the responder served it as a
    duplicate, una passed the responder's ePSN, and both sides stalled to RETRY_EXC_ERR."""
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, timeout=12, mtu=abi.IBV_MTU_4096)
    rng = random.Random(seed)
    n = 1 << 22
    ma, mb = a.mr(n), b.mr(n)
    mb.buf[:] = rng.randbytes(n)
    for i in range(4):
        a.post_send(qa, i, abi.IBV_WR_RDMA_READ, [ma.sge(i << 20, 1 << 20)], rkey=mb.rkey,
                    raddr=mb.iova + (i << 20), ring=False)
    a.dev.doorbell(a.s, a.now)
    run(a, b, net=lambda src, d: [] if rng.random() < 0.05 else [d], max_time=1000)
    assert [w["status"] for w in a.poll(ca)] == [S.IBV_WC_SUCCESS] * 4
    assert ma.buf == mb.buf


@pytest.mark.parametrize("length", [300, 5000])     # an ONLY packet; FIRST..LAST packets
def test_send_longer_than_the_receive_buffer(pair, length):
    """The receive WQE completes with LOC_LEN_ERR (never silently lost), the requester gets
    REM_INV_REQ_ERR, and both QPs go to the error state."""
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb)
    ma, mb = a.mr(8192), b.mr(8192)
    b.post_recv(qb, 7, [mb.sge(0, 200)])
    b.post_recv(qb, 8, [mb.sge(0, 200)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, length)])
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [
        (7, S.IBV_WC_LOC_LEN_ERR), (8, S.IBV_WC_WR_FLUSH_ERR)]
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, S.IBV_WC_REM_INV_REQ_ERR)]
    assert qa.state == qb.state == abi.IBV_QPS_ERR


def test_bad_lkey_in_the_ring_completes_with_loc_prot_err(pair):
    """The client library checks lkeys, but the ring is the client's memory: the data plane
    refuses the WQE and core/ completes it in error, then flushes what follows."""
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb)
    ma, mb = a.mr(4096), b.mr(4096)
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [(ma.iova, 16, ma.lkey ^ 0x40)], rkey=mb.rkey,
                raddr=mb.iova, ring=False)
    a.post_send(qa, 2, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 16)], rkey=mb.rkey, raddr=mb.iova)
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, S.IBV_WC_LOC_PROT_ERR), (2, S.IBV_WC_WR_FLUSH_ERR)]
    assert qa.state == abi.IBV_QPS_ERR


@pytest.mark.parametrize("netdev,active", [(1500, abi.IBV_MTU_1024), (9000, abi.IBV_MTU_4096),
                                           (1100, abi.IBV_MTU_1024), (1099, abi.IBV_MTU_512),
                                           (None, abi.IBV_MTU_4096)])
def test_active_mtu_follows_the_netdev_and_bounds_path_mtu(pair, netdev, active):
    """As rxe: the largest IBTA MTU whose RoCEv2 packets fit the netdev; path_mtu above it is
    refused at modify_qp (IBTA 11.2.4), rather than every packet failing to leave."""
    from rnicd.errors import VerbsError
    a, b, ca, cb, qa, qb = pair
    b.dev.set_netdev_mtu(netdev)
    assert b.dev.active_mtu == active
    if active < abi.IBV_MTU_4096:
        with pytest.raises(VerbsError) as exc:
            connect(a, qa, b, qb, mtu=abi.IBV_MTU_4096)
        assert exc.value.code == 22 and "IBV_QP_PATH_MTU" in exc.value.msg


def test_deregistering_the_mr_a_send_is_received_into(pair):
    """Regression: the data plane holds raw pointers into the receive buffer of a SEND in
    progress; deregistering that MR must not leave them dangling. The WQE completes with
    LOC_PROT_ERR, the QP goes to error, the rest of the SEND is NAKed, nothing is written."""
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb)
    ma, mb = a.mr(8192), b.mr(8192)
    b.post_recv(qb, 7, [mb.sge(0, 8192)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 5000)])
    packets = a.dev.take_tx()                    # FIRST, MIDDLE, ..., LAST (MTU 1024)
    b.dev.receive(packets[0][0], a.dev.ip, 4791, 0.0)
    assert qb.dp.msg == 1                        # a SEND is in progress in the data plane
    mr = next(m for m in b.s.mrs.values() if m.lkey == mb.lkey)
    b.call("dereg_mr", mr=mr.handle)
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [(7, S.IBV_WC_LOC_PROT_ERR)]
    assert qb.state == abi.IBV_QPS_ERR and qb.dp.msg == 0
    for data, _ in packets[1:]:
        b.dev.receive(data, a.dev.ip, 4791, 0.0)   # dropped: the QP is in error


@pytest.mark.parametrize("opcode,missing", [
    (abi.IBV_WR_RDMA_WRITE, abi.IBV_ACCESS_REMOTE_WRITE),
    (abi.IBV_WR_RDMA_READ, abi.IBV_ACCESS_REMOTE_READ),
    (abi.IBV_WR_ATOMIC_FETCH_AND_ADD, abi.IBV_ACCESS_REMOTE_ATOMIC)],
    ids=["write", "read", "atomic"])
def test_operation_the_qp_does_not_allow_is_an_invalid_request(pair, opcode, missing):
    """IBTA 9.7.5.1's opcode-validity check (rxe's check_op_valid) comes before the key
    check: a request the responder QP's access flags do not enable is NAKed Invalid
    Request, even with a bad rkey too, and the requester completes IBV_WC_REM_INV_REQ_ERR."""
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb, access=ALL_ACCESS & ~missing)
    ma = a.mr(4096)
    mb = b.mr(4096)                       # the MR allows everything: only the QP does not
    length = 8 if opcode == abi.IBV_WR_ATOMIC_FETCH_AND_ADD else 200
    a.post_send(qa, 1, opcode, [ma.sge(0, length)], rkey=mb.rkey ^ 0x55, raddr=mb.iova)
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, S.IBV_WC_REM_INV_REQ_ERR)]
    assert b.dev.counters["rcvd_op_not_enabled"] == 1
    assert qb.state == abi.IBV_QPS_ERR


def test_atomic_semantics_of_the_data_plane(pair):
    """rnic_dp_atomic (IBTA 9.4.5): CmpSwap swaps only on a match and returns the original
    either way, FetchAdd wraps modulo 2^64, an unaligned VA or a range outside the region is
    refused with nothing changed, and the device's atomic lock is free afterwards."""
    from rnicd import native
    lib, ffi = native.lib, native.ffi
    a, b, ca, cb, qa, qb = pair
    connect(a, qa, b, qb)
    mb = b.mr(64)
    u64 = (1 << 64) - 1

    def atomic(cas, off, swap_add, compare=0):
        orig = ffi.new("uint64_t *")
        rc = lib.rnic_dp_atomic(b.dev.dp, qb.dp, qb.dp.epsn, cas, mb.iova + off, mb.rkey,
                                swap_add, compare, orig)
        return rc, orig[0]

    def value(off):
        return int.from_bytes(mb.buf[off:off + 8], "little")

    mb.buf[8:16] = (100).to_bytes(8, "little")
    assert atomic(1, 8, 7, compare=99) == (0, 100) and value(8) == 100     # no match
    assert atomic(1, 8, u64, compare=100) == (0, 100) and value(8) == u64  # match: swapped
    assert atomic(0, 8, 3) == (0, u64) and value(8) == 2                    # wraps
    assert atomic(0, 8, u64) == (0, 2) and value(8) == 1                    # adds -1
    epsn = qb.dp.epsn
    assert atomic(0, 4, 1)[0] == -errno.EINVAL                              # unaligned
    assert atomic(0, 64, 1)[0] == -errno.ERANGE                             # outside
    assert qb.dp.epsn == epsn and bytes(mb.buf[:8]) + bytes(mb.buf[16:]) == bytes(56)
    assert ffi.cast("uint32_t *", b.dev.dp.atomic_lock)[0] == 0

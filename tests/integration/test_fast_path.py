"""Acceptance: a steady-state stream of 1 MiB RDMA WRITEs (or READs) runs in the data plane:
fewer than one slow-path event (a datagram handed to Python) per 1000 packets, on both
daemons."""
import ipaddress
import os

import pytest
import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.addr import AH, AHAttr, GlobalRoute
from rnic.qp import QPAttr
from rnic.wr import SGE, RecvWR, SendWR

MiB = 1 << 20


@pytest.mark.parametrize("opcode", [e.IBV_WR_RDMA_WRITE, e.IBV_WR_RDMA_READ])
def test_stream_stays_in_the_data_plane(two_daemons, opcode):
    da, db = two_daemons
    a, b = Side(da, mr_size=16 * MiB, cqe=256), Side(db, mr_size=16 * MiB, cqe=256)
    connect(a, b, mtu=e.IBV_MTU_4096, timeout=14)
    a.mr.write(os.urandom(16 * MiB), 16 * MiB, 0)

    def stream(count, first_id):
        for i in range(count):
            if i >= 8:
                assert poll_n(a.cq, 1)[0].status == e.IBV_WC_SUCCESS
            off = (i % 16) * MiB
            w = SendWR(wr_id=first_id + i, opcode=opcode, num_sge=1,
                       sg=[SGE(a.mr.buf + off, MiB, a.mr.lkey)])
            w.set_wr_rdma(b.mr.rkey, b.mr.buf + off)
            a.qp.post_send(w)
        assert all(w.status == e.IBV_WC_SUCCESS for w in poll_n(a.cq, min(count, 8)))

    stream(8, 0)                                   # warm up: connection setup, first ACKs
    before = a.ctx.get_counters(), b.ctx.get_counters()
    stream(64, 1000)                               # the steady state: 64 MiB, 16384 packets
    after = a.ctx.get_counters(), b.ctx.get_counters()
    assert b.mr.read(16 * MiB, 0) == a.mr.read(16 * MiB, 0)
    delta = [{k: aft.get(k, 0) - bef.get(k, 0) for k in ("sent_pkts", "rcvd_pkts",
                                                           "slow_path_events")}
             for bef, aft in zip(before, after, strict=True)]
    print(f"\nrequester {delta[0]}\nresponder {delta[1]}")
    # 1 MiB = 256 packets of 4096 bytes: WRITE data flows requester -> responder, READ
    # data responder -> requester
    data_packets = max(delta[0]["sent_pkts"], delta[1]["sent_pkts"])
    assert data_packets >= 64 * 256
    for d in delta:
        assert d["slow_path_events"] * 1000 < data_packets   # < 1 per 1000 packets
    a.close()
    b.close()


def test_atomics_stay_in_the_data_plane(two_daemons):
    """FETCH_AND_ADDs, four in flight (max_rd_atomic): fetched, sent, executed and answered in
    C on both sides, each executed once: the counter ends exact and every original value
    returned is distinct."""
    da, db = two_daemons
    a, b = Side(da, mr_size=1 * MiB, cqe=256), Side(db, mr_size=4096, cqe=16)
    connect(a, b, timeout=14)
    b.mr.write(bytes(8), 8, 0)

    def run(count, first_id):
        for i in range(count):
            if i >= 4:
                assert poll_n(a.cq, 1)[0].status == e.IBV_WC_SUCCESS
            w = SendWR(wr_id=first_id + i, opcode=e.IBV_WR_ATOMIC_FETCH_AND_ADD, num_sge=1,
                       sg=[SGE(a.mr.buf + 8 * (first_id + i), 8, a.mr.lkey)])
            w.set_wr_atomic(b.mr.rkey, b.mr.buf, 1)
            a.qp.post_send(w)
        assert all(w.status == e.IBV_WC_SUCCESS for w in poll_n(a.cq, min(count, 4)))

    run(8, 0)                                       # warm up
    before = a.ctx.get_counters(), b.ctx.get_counters()
    run(4000, 8)
    after = a.ctx.get_counters(), b.ctx.get_counters()
    assert int.from_bytes(b.mr.read(8, 0), "little") == 4008
    olds = [int.from_bytes(a.mr.read(8, 8 * i), "little") for i in range(4008)]
    assert sorted(olds) == list(range(4008))
    for bef, aft in zip(before, after, strict=True):
        slow = aft.get("slow_path_events", 0) - bef.get("slow_path_events", 0)
        assert slow * 1000 < 4000, (slow, aft)
    a.close()
    b.close()


@pytest.mark.parametrize("sender_srq", [False, True], ids=["rq", "sender-srq"])
def test_ud_datagrams_stay_in_the_data_plane(two_daemons, sender_srq):
    """A UD QP's datagrams are sent (rnic_dp_pump) and received (rx_ud) in C: 256 SENDs with
    immediate to a QP with receives posted cost neither daemon a slow-path event (a posted
    receive does not wake core/ either; a sender whose receives go to an SRQ, core/'s, still
    sends in C). Each lands GRH first (IBTA
    11.4.1.1; RoCEv2 over IPv4, A17.4.5.2: the datagram's IPv4 header in its last 20 bytes),
    with the sender's QPN, the immediate data and the payload."""
    da, db = two_daemons
    n, size, slot, qkey = 256, 1000, 2048, 0x11111
    a = Side(da, qp_type=e.IBV_QPT_UD, wr=512, sge=1, own_srq=sender_srq)
    b = Side(db, qp_type=e.IBV_QPT_UD, wr=512, sge=1, mr_size=n * slot)
    for s in (a, b):
        attr = QPAttr()
        attr.qkey, attr.sq_psn = qkey, 0
        s.qp.to_rts(attr)
    ah = AH(a.pd, attr=AHAttr(port_num=1, is_global=1,
                              gr=GlobalRoute(dgid=b.gid, sgid_index=0)))
    payload = os.urandom(n * size)
    a.mr.write(payload, n * size, 0)
    for i in range(n):
        b.qp.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(b.mr.buf + i * slot, slot,
                                                            b.mr.lkey)]))
    def core_events(side):                  # datagrams and requests the engines handed up
        return (side.ctx.get_counters().get("slow_path_events", 0)
                + sum(g["events"] for g in side.ctx._call("get_engines")[0]["engines"]))

    before = core_events(a), core_events(b)
    wcs = []
    for first in range(0, n, 16):          # UD has no flow control: bursts a socket holds
        for i in range(first, first + 16):
            w = SendWR(wr_id=i, opcode=e.IBV_WR_SEND_WITH_IMM, imm_data=0xC0DE0000 + i,
                       num_sge=1, sg=[SGE(a.mr.buf + i * size, size, a.mr.lkey)])
            w.set_wr_ud(ah, b.qp.qp_num, qkey)
            a.qp.post_send(w)
        assert all(c.status == e.IBV_WC_SUCCESS for c in poll_n(a.cq, 16))
        wcs += poll_n(b.cq, 16)
    after = core_events(a), core_events(b)
    src, dst = ipaddress.IPv4Address(da.ip).packed, ipaddress.IPv4Address(db.ip).packed
    for i, wc in enumerate(wcs):
        assert (wc.status, wc.wr_id, wc.byte_len, wc.src_qp, wc.imm_data) == \
            (e.IBV_WC_SUCCESS, i, 40 + size, a.qp.qp_num, 0xC0DE0000 + i)
        assert wc.wc_flags & e.IBV_WC_GRH and wc.wc_flags & e.IBV_WC_WITH_IMM
        got = b.mr.read(40 + size, i * slot)
        ip = got[20:40]
        roce_len = 12 + 8 + 4 + size + 4             # BTH, DETH, ImmDt, payload, ICRC
        assert got[:20] == bytes(20) and ip[0] == 0x45 and ip[9] == 17
        assert int.from_bytes(ip[2:4], "big") == 20 + 8 + roce_len
        assert (ip[12:16], ip[16:20]) == (src, dst)
        assert got[40:] == payload[i * size:(i + 1) * size]
    slow = [aft - bef for bef, aft in zip(before, after, strict=True)]
    print(f"\n{n} datagrams: events for core/: sender {slow[0]}, receiver {slow[1]}")
    assert all(x * 100 < n for x in slow)
    a.close()
    b.close()

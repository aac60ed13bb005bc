"""XRC (IBTA Annex A14) through the sans-I/O harness: INI QP -> TGT QP -> the XRC SRQ the
XRCETH names, its CQ and its PD; bad SRQ numbers and domain mismatches; replayed packets."""
import pytest

from rnicd.wire import abi, roce
from rnicd.wire import opcodes as op
from tests.unit.rc_harness import Host, run

M, W, S = abi.QPAttrMask, abi.WROpcode, abi.WCStatus
AH = dict(port_num=1, is_global=1, grh=dict(sgid_index=0, hop_limit=64, flow_label=0,
                                            traffic_class=0))


def xrcd(h: Host, fd=None):
    return h.call("open_xrcd", [fd] if fd is not None else [], oflags=0o100)["xrcd"]


def xsrq(h: Host, x, cq, pd=None, max_wr=64):
    r = h.call("create_srq", pd=h.pd if pd is None else pd, srq_type=abi.IBV_SRQT_XRC,
               xrcd=x, cq=cq.handle, max_wr=max_wr, max_sge=2)
    return h.s.srqs[r["srq"]], r["srq_num"]


def ini(h: Host, cq, n=64):
    r = h.call("create_qp", pd=h.pd, qp_type=abi.IBV_QPT_XRC_SEND, send_cq=cq.handle,
               recv_cq=None, srq=None, sq_sig_all=0,
               cap=dict(max_send_wr=n, max_send_sge=2, max_inline_data=64))
    return h.s.qps[r["qp"]]


def tgt(h: Host, x):
    r = h.call("create_qp", qp_type=abi.IBV_QPT_XRC_RECV, xrcd=x)
    return h.s.qps[r["qp"]]


def up(h: Host, q, peer: Host, peer_qpn, my_psn=100, peer_psn=200, mtu=abi.IBV_MTU_1024):
    """Take an XRC QP to RTS with the masks pyverbs uses for its type."""
    is_tgt = q.qp_type == abi.IBV_QPT_XRC_RECV
    q.modify(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
             dict(qp_state=abi.IBV_QPS_INIT, pkey_index=0, port_num=1,
                  qp_access_flags=abi.RC_ACCESS if is_tgt else 0), h.now)
    rtr = M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN
    if is_tgt:
        rtr |= M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER
    q.modify(rtr, dict(qp_state=abi.IBV_QPS_RTR, path_mtu=mtu, dest_qp_num=peer_qpn,
                       rq_psn=peer_psn, max_dest_rd_atomic=4, min_rnr_timer=1,
                       ah_attr=dict(AH, grh=dict(AH["grh"], dgid=peer.dev.gid))), h.now)
    rts = M.IBV_QP_STATE | M.IBV_QP_TIMEOUT | M.IBV_QP_SQ_PSN
    if not is_tgt:
        rts |= M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY | M.IBV_QP_MAX_QP_RD_ATOMIC
    q.modify(rts, dict(qp_state=abi.IBV_QPS_RTS, timeout=14, retry_cnt=7, rnr_retry=7,
                       sq_psn=my_psn, max_rd_atomic=4), h.now)


@pytest.fixture
def pair():
    """A (client): an INI QP. B (server): an XRC domain with two SRQs (their own CQs) and
    a TGT QP connected to A's INI QP."""
    a, b = Host("10.0.0.1"), Host("10.0.0.2", seed=2)
    scq = a.cq()
    qa = ini(a, scq)
    x = xrcd(b)
    cq1, cq2 = b.cq(), b.cq()
    srq1, n1 = xsrq(b, x, cq1)
    srq2, n2 = xsrq(b, x, cq2)
    qb = tgt(b, x)
    up(a, qa, b, qb.qp_num, 100, 200)
    up(b, qb, a, qa.qp_num, 200, 100)
    return dict(a=a, b=b, qa=qa, qb=qb, scq=scq, x=x, srqs=[(srq1, n1, cq1), (srq2, n2, cq2)])


def test_send_goes_to_the_srq_the_xrceth_names(pair):
    a, b, qa, qb = pair["a"], pair["b"], pair["qa"], pair["qb"]
    (srq1, n1, cq1), (srq2, n2, cq2) = pair["srqs"]
    assert n1 != n2 and 0 < n1 < 1 << 24
    src = a.mr(8192)
    src.buf[:3000] = bytes(i % 251 for i in range(3000))
    dst = b.mr(16384)
    b.post_recv(srq1, 11, [dst.sge(0, 4096)])
    b.post_recv(srq2, 22, [dst.sge(8192, 4096)])
    sent = []
    a.post_send(qa, 1, W.IBV_WR_SEND, [src.sge(0, 3000)], remote_srqn=n1, ring=False)
    a.post_send(qa, 2, W.IBV_WR_SEND_WITH_IMM, [src.sge(0, 100)], imm=0x01020304,
                remote_srqn=n2)
    for data, _ in a.dev.take_tx():           # the data plane's XRC packets (A14.4)
        pkt = roce.parse(data, check_icrc=False)
        sent.append((pkt.opcode, pkt.xrc_srqn))
        b.dev.receive(data, a.dev.ip, 4791, b.now)
    b.dev.end_batch(b.now)
    assert sent == [(op.Opcode.XRC_SEND_FIRST, n1), (op.Opcode.XRC_SEND_MIDDLE, n1),
                    (op.Opcode.XRC_SEND_LAST, n1), (op.Opcode.XRC_SEND_ONLY_WITH_IMMEDIATE, n2)]
    run(a, b)
    c1, c2 = b.poll(cq1), b.poll(cq2)
    assert [(c["wr_id"], c["status"], c["byte_len"], c["qp_num"]) for c in c1] == \
        [(11, S.IBV_WC_SUCCESS, 3000, qb.qp_num)]
    assert [(c["wr_id"], c["byte_len"], c["imm_data"]) for c in c2] == [(22, 100, 0x01020304)]
    assert bytes(dst.buf[:3000]) == bytes(src.buf[:3000])
    assert bytes(dst.buf[8192:8292]) == bytes(src.buf[:100])
    assert [(c["wr_id"], c["status"]) for c in a.poll(pair["scq"])] == \
        [(1, S.IBV_WC_SUCCESS), (2, S.IBV_WC_SUCCESS)]
    acks = b.dev.counter_snapshot()
    assert acks["slow_path_events"] == acks["rcvd_pkts"]     # XRC is core/'s (no fast path)


@pytest.mark.parametrize("how", ["no_such_srq", "basic_srq", "other_domain"])
def test_bad_xrceth_naks_invalid_request(pair, how):
    """A14: an XRCETH naming no XRC SRQ of the TGT QP's domain: NAK Invalid Request (after
    the PSN and opcode-sequence checks); the requester completes with REM_INV_REQ_ERR."""
    a, b, qa, qb = pair["a"], pair["b"], pair["qa"], pair["qb"]
    (srq1, n1, cq1), _ = pair["srqs"]
    if how == "no_such_srq":
        srqn = 0xABCDE
    elif how == "basic_srq":      # a basic SRQ has no number an XRCETH can name
        b.call("create_srq", pd=b.pd, max_wr=4, max_sge=1)
        srqn = 0
    else:
        other = xrcd(b)
        _srq, srqn = xsrq(b, other, b.cq())
    src = a.mr(4096)
    dst = b.mr(4096)
    b.post_recv(srq1, 11, [dst.sge()])
    a.post_send(qa, 1, W.IBV_WR_SEND, [src.sge(0, 64)], remote_srqn=srqn)
    run(a, b)
    assert [c["status"] for c in a.poll(pair["scq"])] == [S.IBV_WC_REM_INV_REQ_ERR]
    assert qb.state == abi.IBV_QPS_ERR and qa.state == abi.IBV_QPS_ERR
    assert qb.counters["xrc_srqn_err"] == 1
    assert b.poll(cq1) == []                  # the SRQ's WQE was not touched
    assert srq1.rq.available() == 1


def test_rdma_uses_the_pd_of_the_srq_named(pair):
    """WRITE, READ and atomics to a TGT QP are checked against the PD of the XRC SRQ their
    XRCETH names (A14.2.2): an MR of another PD is a remote access error."""
    a, b, qa = pair["a"], pair["b"], pair["qa"]
    (_srq1, n1, _cq1), _ = pair["srqs"]
    src = a.mr(8192)
    src.buf[:5000] = b"w" * 5000
    dst = b.mr(8192, iova=0x40000)
    a.post_send(qa, 1, W.IBV_WR_RDMA_WRITE, [src.sge(0, 5000)], rkey=dst.rkey,
                raddr=0x40000, remote_srqn=n1)
    dst.buf[6000:6008] = (5).to_bytes(8, "little")
    a.post_send(qa, 2, W.IBV_WR_ATOMIC_FETCH_AND_ADD, [src.sge(6000, 8)], rkey=dst.rkey,
                raddr=0x40000 + 6000, compare_add=3, remote_srqn=n1)
    a.post_send(qa, 3, W.IBV_WR_RDMA_READ, [src.sge(7000, 1000)], rkey=dst.rkey,
                raddr=0x40000, remote_srqn=n1)
    run(a, b)
    assert [(c["wr_id"], c["status"]) for c in a.poll(pair["scq"])] == \
        [(1, S.IBV_WC_SUCCESS), (2, S.IBV_WC_SUCCESS), (3, S.IBV_WC_SUCCESS)]
    assert bytes(dst.buf[:5000]) == b"w" * 5000
    assert int.from_bytes(dst.buf[6000:6008], "little") == 8
    assert int.from_bytes(src.buf[6000:6008], "little") == 5
    assert bytes(src.buf[7000:8000]) == b"w" * 1000
    # an MR of another PD: not reachable through this SRQ
    pd2 = b.call("alloc_pd")["pd"]
    tok = next(b.shm._tok)
    b.shm.regions[tok] = bytearray(4096)
    r = b.call("reg_mr", [tok], pd=pd2, addr=0x90000, length=4096, access=abi.RC_ACCESS)
    a.post_send(qa, 4, W.IBV_WR_RDMA_WRITE, [src.sge(0, 16)], rkey=r["rkey"], raddr=0x90000,
                remote_srqn=n1)
    run(a, b)
    assert [c["status"] for c in a.poll(pair["scq"])] == [S.IBV_WC_REM_ACCESS_ERR]


def test_replayed_packets(pair):
    """Hand-built packets to the TGT QP: an RC opcode is another transport's (dropped and
    counted); an XRC SEND ONLY in sequence lands in the SRQ; a request to the INI QP and a
    response to the TGT QP are dropped."""
    a, b, qa, qb = pair["a"], pair["b"], pair["qa"], pair["qb"]
    (srq1, n1, cq1), _ = pair["srqs"]
    dst = b.mr(4096)
    b.post_recv(srq1, 7, [dst.sge()])

    def send(host_to, pkt, src_ip):
        data = roce.build(pkt, src_ip=src_ip, dst_ip=host_to.dev.ip, sport=4791)
        host_to.dev.receive(data, src_ip, 4791, host_to.now)
        host_to.dev.end_batch(host_to.now)

    before = b.dev.counter_snapshot().get("rx_drop_wrong_transport", 0)
    send(b, roce.Packet(opcode=op.Opcode.RC_SEND_ONLY, dest_qp=qb.qp_num, psn=100,
                        payload=b"rc"), a.dev.ip)
    send(b, roce.Packet(opcode=op.Opcode.XRC_ACKNOWLEDGE, dest_qp=qb.qp_num, psn=100,
                        aeth_syndrome=0x1F, aeth_msn=0), a.dev.ip)
    send(a, roce.Packet(opcode=op.Opcode.XRC_SEND_ONLY, dest_qp=qa.qp_num, psn=200,
                        xrc_srqn=1, payload=b"x"), b.dev.ip)
    assert b.dev.counter_snapshot()["rx_drop_wrong_transport"] == before + 2
    assert a.dev.counter_snapshot()["rx_drop_wrong_transport"] >= 1
    send(b, roce.Packet(opcode=op.Opcode.XRC_SEND_ONLY, dest_qp=qb.qp_num, psn=100,
                        ackreq=True, xrc_srqn=n1, payload=b"replayed"), a.dev.ip)
    assert [(c["wr_id"], c["byte_len"]) for c in b.poll(cq1)] == [(7, 8)]
    assert bytes(dst.buf[:8]) == b"replayed"
    ack = roce.parse(b.dev.take_tx()[-1][0], check_icrc=False)
    assert ack.opcode == op.Opcode.XRC_ACKNOWLEDGE and ack.psn == 100   # A14: XRC ACK


def test_shared_domain_and_lifetimes():
    """Two contexts opening the same file share one domain: an SRQ made in one serves a TGT
    QP of the other. close_xrcd while used: EBUSY. O_EXCL on an open file: EINVAL; no
    O_CREAT on a new file: EAGAIN."""
    from rnicd.api.session import Session
    from rnicd.errors import VerbsError
    h = Host("10.0.0.9")
    s2 = Session(h.dev, h.shm)
    x1 = h.call("open_xrcd", [5], oflags=0o100)["xrcd"]
    x2, _ = s2.call("open_xrcd", {"oflags": 0o100}, [5], 0.0)
    assert h.s.xrcds[x1].domain is s2.xrcds[x2["xrcd"]].domain
    with pytest.raises(VerbsError) as ei:
        h.call("open_xrcd", [5], oflags=0o100 | 0o200)
    assert ei.value.code == 22
    with pytest.raises(VerbsError) as ei:
        h.call("open_xrcd", [6], oflags=0)
    assert ei.value.code == 11
    cq = h.cq()
    srq, n = xsrq(h, x1, cq)
    dom = h.s.xrcds[x1].domain
    assert h.dev.xrc_srq(n, dom) is srq
    with pytest.raises(VerbsError) as ei:
        h.call("close_xrcd", xrcd=x1)
    assert ei.value.code == 16
    h.call("destroy_srq", srq=srq.handle)
    assert h.dev.xrc_srq(n, dom) is None
    h.call("close_xrcd", xrcd=x1)
    assert h.dev.xrc_domains            # still open in the other context
    s2.close(0.0)
    assert not h.dev.xrc_domains

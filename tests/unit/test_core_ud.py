"""UD QPs, sans-I/O: address handles, Q_Key, DETH, the GRH in front of the payload."""
import ipaddress

from rc_harness import Host, run

from rnicd.wire import abi

M = abi.QPAttrMask


def ud_ready(h: Host, cq, qkey=0x1234):
    qp = h.qp(cq, qp_type=abi.IBV_QPT_UD)
    qp.modify(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY,
              dict(qp_state=abi.IBV_QPS_INIT, pkey_index=0, port_num=1, qkey=qkey), h.now)
    qp.modify(M.IBV_QP_STATE, dict(qp_state=abi.IBV_QPS_RTR), h.now)
    qp.modify(M.IBV_QP_STATE | M.IBV_QP_SQ_PSN, dict(qp_state=abi.IBV_QPS_RTS, sq_psn=7), h.now)
    return qp


def ah_to(h: Host, peer: Host) -> int:
    return h.call("create_ah", pd=h.pd, ah_attr=dict(
        port_num=1, is_global=1, grh=dict(dgid=peer.dev.gid, sgid_index=0)))["ah"]


def test_ud_send_delivers_grh_payload_and_src_qp():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa, qb = ud_ready(a, ca), ud_ready(b, cb)
    ma, mb = a.mr(4096), b.mr(8192)
    ma.buf[:100] = bytes(range(100))
    b.post_recv(qb, 11, [mb.sge(0, 2048)])
    b.post_recv(qb, 12, [mb.sge(2048, 2048)])
    ah = ah_to(a, b)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 100)], ah=ah, remote_qpn=qb.qp_num,
                remote_qkey=0x1234)
    a.post_send(qa, 2, abi.IBV_WR_SEND_WITH_IMM, [ma.sge(0, 10)], ah=ah, imm=0xABCD,
                remote_qpn=qb.qp_num, remote_qkey=0x1234)
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
        (1, abi.IBV_WC_SUCCESS), (2, abi.IBV_WC_SUCCESS)]
    wb = b.poll(cb)
    assert [(w["wr_id"], w["byte_len"], w["opcode"]) for w in wb] == [
        (11, 140, abi.IBV_WC_RECV), (12, 50, abi.IBV_WC_RECV)]
    assert all(w["wc_flags"] & abi.IBV_WC_GRH for w in wb)
    assert wb[1]["wc_flags"] & abi.IBV_WC_WITH_IMM and wb[1]["imm_data"] == 0xABCD
    assert mb.buf[40:140] == ma.buf[:100]
    ip = mb.buf[20:40]                             # A17.4.5.2: the IPv4 header in the GRH
    assert ip[0] == 0x45 and ipaddress.IPv4Address(bytes(ip[12:16])) == \
        ipaddress.IPv4Address("127.0.0.1")


def test_ud_qkey_mismatch_and_missing_recv_are_dropped_and_counted():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa, qb = ud_ready(a, ca), ud_ready(b, cb)
    ma, mb = a.mr(4096), b.mr(4096)
    ah = ah_to(a, b)
    b.post_recv(qb, 5, [mb.sge(0, 1024)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 8)], ah=ah, remote_qpn=qb.qp_num,
                remote_qkey=0x9999)                 # wrong Q_Key
    run(a, b)
    assert b.poll(cb) == [] and qb.counters["qkey_violation"] == 1
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 8)], ah=ah, remote_qpn=qb.qp_num,
                remote_qkey=0x1234)
    a.post_send(qa, 3, abi.IBV_WR_SEND, [ma.sge(0, 8)], ah=ah, remote_qpn=qb.qp_num,
                remote_qkey=0x1234)                 # no receive WQE left for this one
    run(a, b)
    assert [w["wr_id"] for w in b.poll(cb)] == [5]
    assert qb.counters["ud_no_recv_wqe"] == 1
    assert len(a.poll(ca)) == 3                     # sends complete when they leave


def test_ud_send_larger_than_the_mtu_fails_locally():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa, qb = ud_ready(a, ca), ud_ready(b, cb)
    a.dev.set_netdev_mtu(1500)                      # active MTU 1024
    ma = a.mr(8192)
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 2000)], ah=ah_to(a, b),
                remote_qpn=qb.qp_num, remote_qkey=0x1234)
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, abi.IBV_WC_LOC_LEN_ERR)]
    assert qa.state == abi.IBV_QPS_ERR


def test_ud_recv_wqe_with_more_sges_than_the_cap_completes_in_error():
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa, qb = ud_ready(a, ca), ud_ready(b, cb)
    ma, mb = a.mr(4096), b.mr(8192)
    b.post_recv(qb, 11, [mb.sge(0, 2048)])
    qb.rq.ring.recv_wqe(0).num_sge = 9                 # cap 4: the client broke the entry
    b.post_recv(qb, 12, [mb.sge(2048, 2048)])
    ah = ah_to(a, b)
    for wr_id in (1, 2):
        a.post_send(qa, wr_id, abi.IBV_WR_SEND, [ma.sge(0, 100)], ah=ah,
                    remote_qpn=qb.qp_num, remote_qkey=0x1234)
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [
        (11, abi.IBV_WC_LOC_LEN_ERR), (12, abi.IBV_WC_SUCCESS)]
    assert mb.buf[:2048] == bytes(2048)


def test_ud_wqes_meet_the_data_planes_checks():
    """UD send and receive WQEs are validated by the same C functions as RC's
    (rnic_dp_swqe_load, rnic_dp_recv_begin/_place, rnic_dp_mr_check): an opcode UD does not
    carry, a bad lkey, a receive buffer too small for GRH + payload."""
    cases = [  # (opcode, lkey fault, expected send status)
        (abi.IBV_WR_RDMA_WRITE, False, abi.IBV_WC_LOC_QP_OP_ERR),
        (abi.IBV_WR_SEND, True, abi.IBV_WC_LOC_PROT_ERR),
    ]
    for opcode, bad_key, status in cases:
        a, b = Host("127.0.0.1"), Host("127.0.0.2")
        ca, cb = a.cq(), b.cq()
        qa, qb = ud_ready(a, ca), ud_ready(b, cb)
        ma = a.mr(4096)
        addr, n, lkey = ma.sge(0, 64)
        a.post_send(qa, 1, opcode, [(addr, n, lkey ^ 1 if bad_key else lkey)], ah=ah_to(a, b),
                    remote_qpn=qb.qp_num, remote_qkey=0x1234)
        run(a, b)
        assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, status)]
        assert qa.state == abi.IBV_QPS_ERR
    a, b = Host("127.0.0.1"), Host("127.0.0.2")
    ca, cb = a.cq(), b.cq()
    qa, qb = ud_ready(a, ca), ud_ready(b, cb)
    ma, mb = a.mr(4096), b.mr(4096)
    b.post_recv(qb, 11, [mb.sge(0, 100)])                # 40 + 100 bytes do not fit
    addr, n, lkey = mb.sge(0, 1024)
    b.post_recv(qb, 12, [(addr, n, lkey ^ 1)])           # not a key
    b.post_recv(qb, 13, [mb.sge(0, 140)])                # exactly fits
    ah = ah_to(a, b)
    for wr_id in (1, 2, 3):
        a.post_send(qa, wr_id, abi.IBV_WR_SEND, [ma.sge(0, 100)], ah=ah,
                    remote_qpn=qb.qp_num, remote_qkey=0x1234)
    run(a, b)
    assert [(w["wr_id"], w["status"]) for w in b.poll(cb)] == [
        (11, abi.IBV_WC_LOC_LEN_ERR), (12, abi.IBV_WC_LOC_PROT_ERR), (13, abi.IBV_WC_SUCCESS)]


def test_ud_address_handles_and_qkeys_in_the_data_plane():
    """rnic_dp_swqe_load finds a UD WQE's AH in the data plane's table: a Q_Key with the high
    bit set sends the QP's own (IBTA 10.2.5), the DETH carries the sender's QPN and the BTH
    its SQ PSN; an AH of another PD fails the WQE (IBV_WC_LOC_QP_OP_ERR) and the QP, as does
    a handle that names no AH."""
    for bad_ah in ("other_pd", "none"):
        a, b = Host("127.0.0.1"), Host("127.0.0.2")
        ca, cb = a.cq(), b.cq()
        qa, qb = ud_ready(a, ca, qkey=0x5555), ud_ready(b, cb, qkey=0x5555)
        ma, mb = a.mr(4096), b.mr(4096)
        b.post_recv(qb, 11, [mb.sge(0, 1024)])
        a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 8)], ah=ah_to(a, b),
                    remote_qpn=qb.qp_num, remote_qkey=0x80000000)
        run(a, b)
        assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [(1, abi.IBV_WC_SUCCESS)]
        assert [(w["wr_id"], w["status"], w["src_qp"]) for w in b.poll(cb)] == [
            (11, abi.IBV_WC_SUCCESS, qa.qp_num)]
        assert qa.query()["sq_psn"] == 8              # ud_ready's 7, one datagram later
        if bad_ah == "other_pd":
            other = a.call("alloc_pd")["pd"]
            ah = a.call("create_ah", pd=other, ah_attr=dict(
                port_num=1, is_global=1, grh=dict(dgid=b.dev.gid, sgid_index=0)))["ah"]
        else:
            ah = ah_to(a, b) + 1000
        a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 8)], ah=ah, remote_qpn=qb.qp_num,
                    remote_qkey=0x5555)
        run(a, b)
        assert [(w["wr_id"], w["status"]) for w in a.poll(ca)] == [
            (2, abi.IBV_WC_LOC_QP_OP_ERR)]
        assert qa.state == abi.IBV_QPS_ERR and b.poll(cb) == []

"""The CM state machine (core/cm) between two sans-I/O devices: handshakes with lost MADs,
a slow consumer (MRA), backlog, offload with bulk notification, disconnect races, abortive
close. The network is the rc_harness one, so every loss is deterministic."""
import pytest
from rc_harness import Host, run

from rnicd.core.cm import agent
from rnicd.errors import VerbsError
from rnicd.wire import abi, cma, mad
from rnicd.wire.cma import CMEventType as E


def cm_events(h: Host, take=True) -> list[dict]:
    evs = [ev for _owner, ev in h.dev.events if "cm_event" in ev]
    if take:
        h.dev.events = [(o, ev) for o, ev in h.dev.events if "cm_event" not in ev]
    return evs


def kinds(evs) -> list[E]:
    return [E(ev["cm_event"]) for ev in evs]


def attr_of(msg_bytes: bytes):
    return mad.unpack(msg_bytes)[1]


class Net:
    """Drops the MADs a test names (by class, counting occurrences from 1)."""

    def __init__(self, drop=()):
        self.drop = dict(drop)       # {CmRep: {1}, ...}
        self.seen: dict[type, int] = {}
        self.log: list[str] = []

    def __call__(self, src, data):
        from rnicd.wire import roce
        pkt = roce.parse(data, check_icrc=False)
        if pkt.dest_qp != mad.GSI_QPN:
            return [data]
        msg = attr_of(bytes(pkt.payload))
        n = self.seen[type(msg)] = self.seen.get(type(msg), 0) + 1
        self.log.append(type(msg).__name__.removeprefix("Cm").upper())
        return [] if n in self.drop.get(type(msg), ()) else [data]


def setup(port=5000, backlog=0, offload=None):
    a, b = Host("10.0.0.1", seed=1), Host("10.0.0.2", seed=2)
    qa = a.qp(a.cq())
    lid = b.call("cm_create_id")["id"]
    b.call("cm_listen", id=lid, port=port, backlog=backlog, offload=offload)
    return a, b, qa, lid


def connect(a, qa, port=5000, data=b"hi"):
    cid = a.call("cm_create_id")["id"]
    a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=port,
           private_data=data, conn_param={})
    return cid


def accept(b, req, data=b"ok"):
    qb = b.qp(b.cq())
    b.call("cm_accept", id=req["id"], qp=qb.handle, private_data=data, conn_param={})
    return qb


def test_handshake_moves_both_qps_to_rts_and_data_flows():
    a, b, qa, lid = setup()
    cid = connect(a, qa, data=b"hello")
    net = Net()
    run(a, b, net, until=0.1)
    req, = cm_events(b)
    assert E(req["cm_event"]) == E.RDMA_CM_EVENT_CONNECT_REQUEST and req["listen_id"] == lid
    assert req["private_data"].startswith(b"hello") and req["remote_ip"] == "10.0.0.1"
    qb = accept(b, req, b"welcome")
    run(a, b, net)
    assert net.log == ["REQ", "REP", "RTU"]
    ea, = cm_events(a)
    eb, = cm_events(b)
    assert kinds([ea, eb]) == [E.RDMA_CM_EVENT_ESTABLISHED] * 2
    assert ea["private_data"].startswith(b"welcome") and ea["remote_qpn"] == qb.qp_num
    assert qa.state == qb.state == abi.IBV_QPS_RTS
    assert qa.attr["dest_qp_num"] == qb.qp_num and qb.attr["dest_qp_num"] == qa.qp_num
    assert qa.requester.next_psn == qb.responder.epsn        # PSNs from the REQ/REP
    assert qb.requester.next_psn == qa.responder.epsn
    # disconnect from the passive side: both QPs in ERR, both DISCONNECTED
    b.call("cm_disconnect", id=req["id"])
    run(a, b, net)
    assert net.log[3:] == ["DREQ", "DREP"]
    after = [E.RDMA_CM_EVENT_DISCONNECTED, E.RDMA_CM_EVENT_TIMEWAIT_EXIT]
    assert kinds(cm_events(a)) == kinds(cm_events(b)) == after
    assert qa.state == qb.state == abi.IBV_QPS_ERR
    assert cid in a.s.cm_ids


def test_lost_rep_and_lost_rtu_are_recovered_by_resends():
    a, b, qa, lid = setup()
    connect(a, qa)
    net = Net(drop={mad.CmRep: {1}, mad.CmRtu: {1}})
    run(a, b, net, until=0.1)
    req, = cm_events(b)
    accept(b, req)
    run(a, b, net)
    # REP lost: resent (on the passive side's timer, or for the active side's repeated REQ);
    # then the RTU is lost: the active side answers the next REP with its RTU again
    assert net.log[:2] == ["REQ", "REP"] and net.log[-2:] == ["REP", "RTU"]
    assert net.seen[mad.CmRtu] == 2 and net.seen[mad.CmRep] >= 3
    assert kinds(cm_events(a)) == [E.RDMA_CM_EVENT_ESTABLISHED]
    assert kinds(cm_events(b)) == [E.RDMA_CM_EVENT_ESTABLISHED]
    assert a.dev.counters["cm_rx_dup_rep"] == 1


def test_slow_consumer_gets_an_mra_and_the_peer_waits():
    a, b, qa, lid = setup()
    connect(a, qa)
    net = Net()
    resend = agent.cm_timeout(agent.CM_RESPONSE_TIMEOUT)
    run(a, b, net, until=1.5 * resend)          # one REQ resend, then the MRA
    assert net.log[:3] == ["REQ", "REQ", "MRA"]
    req, = cm_events(b)
    a.now = b.now = 5.0                            # the consumer takes 5 s: still in time
    accept(b, req)
    run(a, b, net, max_time=6.0)
    assert kinds(cm_events(a)) == [E.RDMA_CM_EVENT_ESTABLISHED]


def test_unanswered_req_gives_unreachable_after_max_retries():
    a = Host("10.0.0.1")
    qa = a.qp(a.cq())
    cid = a.call("cm_create_id")["id"]
    a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.9", port=1, conn_param={})
    sent = 0
    while (t := a.dev.next_deadline()) is not None:
        sent += len(a.dev.take_tx())
        a.now = t
        a.dev.on_timer(t)
    sent += len(a.dev.take_tx())
    assert sent == 1 + agent.MAX_CM_RETRIES + 1          # REQ, resends, then REJ(timeout)
    ev, = cm_events(a)
    assert E(ev["cm_event"]) == E.RDMA_CM_EVENT_UNREACHABLE and ev["status"] == -110


def test_backlog_full_is_rejected_with_consumer_defined_reason():
    a, b, qa, lid = setup(backlog=1)
    connect(a, qa)
    qa2 = a.qp(a.cq())
    connect(a, qa2)
    run(a, b, Net(), until=0.1)
    assert len(cm_events(b)) == 1                     # one request waits for the consumer
    rej, = cm_events(a)
    assert E(rej["cm_event"]) == E.RDMA_CM_EVENT_REJECTED
    assert rej["status"] == mad.RejReason.CONSUMER_DEFINED
    assert rej["private_data"].startswith(b"rnicd: listen backlog full")


def test_offload_establishes_and_notifies_in_bulk():
    a = Host("10.0.0.1", seed=1)
    b = Host("10.0.0.2", seed=2)
    cq = b.cq(64)
    mr = b.mr(3600)
    lid = b.call("cm_create_id")["id"]
    offload = {"qp_init": {"pd": b.pd, "send_cq": cq.handle, "recv_cq": cq.handle,
                           "cap": {"max_send_wr": 4, "max_recv_wr": 4}},
               "recv": {"mr": next(iter(b.s.mrs)), "length": 256, "count": 2},
               "notify_max": 3, "notify_usec": 100000}
    b.call("cm_listen", id=lid, port=5000, backlog=16, offload=offload)
    qps = [a.qp(a.cq()) for _ in range(7)]
    for q in qps:
        connect(a, q)
    run(a, b, Net())
    notes = cm_events(b)
    assert kinds(notes) == [E.RNIC_CM_EVENT_OFFLOAD_ESTABLISHED] * 3
    assert [len(n["conns"]) for n in notes] == [3, 3, 1]      # the last one after the delay
    assert kinds(cm_events(a)) == [E.RDMA_CM_EVENT_ESTABLISHED] * 7
    conns = [c for n in notes for c in n["conns"]]
    assert sorted(c["remote_qpn"] for c in conns) == sorted(q.qp_num for q in qps)
    for c in conns:
        qp = b.s.qps[c["qp"]]
        assert qp.state == abi.IBV_QPS_RTS and qp.rq.available() == 2     # pre-posted
    # seven connections x two 256-byte buffers carved from the 3600-byte MR
    addrs = sorted(b.s.qps[c["qp"]].rq.ring.recv_wqe(i).wr_id for c in conns for i in (0, 1))
    assert addrs == [mr.iova + 256 * i for i in range(14)]
    assert b.dev.counters["cm_offload_notifications"] == 3
    # an eighth connection no longer fits in the MR: REJ no resources
    q8 = a.qp(a.cq())
    connect(a, q8)
    run(a, b, Net())
    rej, = cm_events(a)
    assert rej["status"] == mad.RejReason.NO_RESOURCES
    assert b.call("open_qp", qp=conns[0]["qp"])["qp_num"] == conns[0]["qp_num"]
    with pytest.raises(VerbsError):
        b.call("open_qp", qp=conns[0]["qp"])                  # rings go out once


def test_crossing_dreqs_and_lost_drep():
    a, b, qa, lid = setup()
    cid = connect(a, qa)
    net = Net(drop={mad.CmDrep: {1}})
    run(a, b, net, until=0.1)
    req, = cm_events(b)
    accept(b, req)
    run(a, b, net)
    cm_events(a), cm_events(b)
    a.call("cm_disconnect", id=cid)
    b.call("cm_disconnect", id=req["id"])              # both at once: DREQs cross
    run(a, b, net)
    assert kinds(cm_events(a)) == [E.RDMA_CM_EVENT_DISCONNECTED, E.RDMA_CM_EVENT_TIMEWAIT_EXIT]
    assert kinds(cm_events(b)) == [E.RDMA_CM_EVENT_DISCONNECTED, E.RDMA_CM_EVENT_TIMEWAIT_EXIT]
    assert not a.dev.cm.by_comm_id and not b.dev.cm.by_comm_id      # records gone


def test_client_gone_disconnects_its_connections():
    a, b, qa, lid = setup()
    connect(a, qa)
    run(a, b, Net(), until=0.1)
    req, = cm_events(b)
    accept(b, req)
    run(a, b, Net())
    cm_events(a), cm_events(b)
    a.s.close(a.now)                                   # the client died
    net = Net()
    run(a, b, net)
    assert net.log == ["DREQ", "DREP"]
    assert kinds(cm_events(b)) == [E.RDMA_CM_EVENT_DISCONNECTED, E.RDMA_CM_EVENT_TIMEWAIT_EXIT]
    assert cm_events(a) == []                          # nobody left to tell
    assert a.dev.counters["cm_aborted_by_owner_exit"] == 1


def test_verbs_check_their_state():
    a, b, qa, lid = setup()
    with pytest.raises(VerbsError):
        b.call("cm_accept", id=lid, qp=b.qp(b.cq()).handle, conn_param={})  # a listener
    cid = connect(a, qa)
    with pytest.raises(VerbsError):
        connect(a, qa)                                 # the QP has a connection already
    with pytest.raises(VerbsError):
        a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=5000,
               conn_param={})                          # not idle any more
    with pytest.raises(VerbsError):
        a.call("cm_connect", id=a.call("cm_create_id")["id"], qp=a.qp(a.cq()).handle,
               dst_ip="10.0.0.2", port=5000, conn_param={}, private_data=bytes(57))
    with pytest.raises(VerbsError):
        b.call("cm_listen", id=b.call("cm_create_id")["id"], port=5000)   # port in use


# ---- SIDR: UD service resolution (IBTA 12.11), rdma_cm's RDMA_PS_UDP --------------------
def ud_qp(h: Host, cid: int):
    """A UD QP moved as librdmacm's ucma_init_ud_qp does: rdma_init_qp_attr for each state."""
    qp = h.qp(h.cq(), qp_type=abi.IBV_QPT_UD)
    for state in (abi.IBV_QPS_INIT, abi.IBV_QPS_RTR, abi.IBV_QPS_RTS):
        r = h.call("cm_init_qp_attr", id=cid, qp_state=int(state))
        qp.modify(r["attr_mask"], r["attr"], h.now)
    return qp


def sidr_setup(port=7471):
    a, b = Host("10.0.0.1", seed=1), Host("10.0.0.2", seed=2)
    lid = b.call("cm_create_id", ps=cma.RDMA_PS_UDP)["id"]
    b.call("cm_listen", id=lid, port=port)
    cid = a.call("cm_create_id", ps=cma.RDMA_PS_UDP)["id"]
    return a, b, lid, cid, ud_qp(a, cid)


def test_sidr_resolves_qpn_and_qkey_and_ud_sends_flow_both_ways():
    a, b, lid, cid, qa = sidr_setup()
    assert qa.state == abi.IBV_QPS_RTS and qa.attr["qkey"] == cma.RDMA_UDP_QKEY
    a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=7471,
           conn_param={}, private_data=b"udaddy")
    net = Net()
    run(a, b, net, until=0.1)
    req, = cm_events(b)
    assert E(req["cm_event"]) == E.RDMA_CM_EVENT_CONNECT_REQUEST and req["listen_id"] == lid
    assert req["private_data"].startswith(b"udaddy") and len(req["private_data"]) == 180
    qb = ud_qp(b, req["id"])
    b.call("cm_accept", id=req["id"], qp=qb.handle, conn_param={}, private_data=b"hi")
    run(a, b, net)
    assert net.log == ["SIDRREQ", "SIDRREP"]
    assert cm_events(b) == []                         # no ESTABLISHED on the passive side
    est, = cm_events(a)
    assert E(est["cm_event"]) == E.RDMA_CM_EVENT_ESTABLISHED
    assert est["private_data"][:2] == b"hi" and len(est["private_data"]) == 136
    ud = est["ud_param"]
    assert ud["qp_num"] == qb.qp_num and ud["qkey"] == cma.RDMA_UDP_QKEY
    assert ud["ah_attr"]["grh"]["dgid"] == b.dev.gid and ud["ah_attr"]["is_global"] == 1
    # UD SENDs with what the event gave: the AH, the remote QPN and Q_Key; and back
    ma, mb = a.mr(4096), b.mr(4096)
    ma.buf[:64] = b"c" * 64
    ah = a.call("create_ah", pd=a.pd, ah_attr=ud["ah_attr"])["ah"]
    b.post_recv(qb, 1, [mb.sge(0, 2048)])
    a.post_send(qa, 2, abi.IBV_WR_SEND, [ma.sge(0, 64)], ah=ah, remote_qpn=ud["qp_num"],
                remote_qkey=ud["qkey"])
    run(a, b, net)
    wb, = b.poll(qb.recv_cq)
    assert wb["status"] == abi.IBV_WC_SUCCESS and wb["src_qp"] == qa.qp_num
    assert mb.buf[40:104] == b"c" * 64
    ah_b = b.call("create_ah", pd=b.pd, ah_attr=dict(
        port_num=1, is_global=1, grh=dict(dgid=a.dev.gid, sgid_index=0)))["ah"]
    a.post_recv(qa, 3, [ma.sge(1024, 2048)])
    mb.buf[:16] = b"s" * 16
    b.post_send(qb, 4, abi.IBV_WR_SEND, [mb.sge(0, 16)], ah=ah_b, remote_qpn=wb["src_qp"],
                remote_qkey=cma.RDMA_UDP_QKEY)
    run(a, b, net)
    assert [w["status"] for w in a.poll(qa.recv_cq)] == [abi.IBV_WC_SUCCESS, abi.IBV_WC_SUCCESS]
    assert ma.buf[1024 + 40:1024 + 56] == b"s" * 16
    assert a.dev.counters["cm_sidr_resolved"] == b.dev.counters["cm_sidr_accepted"] == 1


def test_sidr_to_an_unknown_service_and_a_rejecting_one():
    a, b, lid, cid, qa = sidr_setup()
    a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=9, conn_param={})
    net = Net()
    run(a, b, net)
    ev, = cm_events(a)             # rdma_cm: UNREACHABLE, status = the SIDR_REP status
    assert E(ev["cm_event"]) == E.RDMA_CM_EVENT_UNREACHABLE
    assert ev["status"] == mad.SidrStatus.SID_NOT_SUPPORTED
    assert b.dev.counters["cm_tx_sidr_sid_not_supported"] == 1
    # the TCP port space is another service: a SIDR_REQ never finds an RC listener
    tcp = b.call("cm_create_id")["id"]
    b.call("cm_listen", id=tcp, port=9)
    cid2 = a.call("cm_create_id", ps=cma.RDMA_PS_UDP)["id"]
    a.call("cm_connect", id=cid2, qp=None, dst_ip="10.0.0.2", port=9, conn_param={})
    run(a, b, net)
    assert cm_events(a)[0]["status"] == mad.SidrStatus.SID_NOT_SUPPORTED
    # a consumer reject: status 2 and its private data
    cid3 = a.call("cm_create_id", ps=cma.RDMA_PS_UDP)["id"]
    a.call("cm_connect", id=cid3, qp=None, dst_ip="10.0.0.2", port=7471, conn_param={})
    run(a, b, net, until=a.now + 0.1)
    req, = cm_events(b)
    b.call("cm_reject", id=req["id"], private_data=b"go away")
    run(a, b, net)
    ev, = cm_events(a)
    assert E(ev["cm_event"]) == E.RDMA_CM_EVENT_UNREACHABLE
    assert ev["status"] == mad.SidrStatus.REJECTED and ev["private_data"][:7] == b"go away"
    assert a.dev.counters["cm_rx_sidr_status_rejected"] == 1


def test_sidr_lost_messages_and_duplicates():
    a, b, lid, cid, qa = sidr_setup()
    a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=7471, conn_param={})
    net = Net(drop={mad.CmSidrReq: {1}, mad.CmSidrRep: {1}})
    resend = agent.cm_timeout(agent.CM_RESPONSE_TIMEOUT)
    run(a, b, net, until=1.5 * resend)             # the first SIDR_REQ was lost: resent
    req, = cm_events(b)
    qb = ud_qp(b, req["id"])
    b.call("cm_accept", id=req["id"], qp=qb.handle, conn_param={})
    run(a, b, net)                                 # the SIDR_REP is lost: the next REQ
    assert net.log == ["SIDRREQ", "SIDRREQ", "SIDRREP", "SIDRREQ", "SIDRREP"]
    assert b.dev.counters["cm_rx_dup_sidr_req"] == 1   # answered from the kept SIDR_REP
    est, = cm_events(a)
    assert est["ud_param"]["qp_num"] == qb.qp_num
    # a SIDR_REP that answers nothing (stale, or forged) is dropped and counted
    stale = mad.pack(mad.CmSidrRep(request_id=0x1234, status=0, service_id=0, qpn=5), 1)
    b.dev.cm._emit("10.0.0.1", stale)
    run(a, b, net)
    assert a.dev.counters["cm_rx_drop_stale"] == 1 and cm_events(a) == []
    assert not b.dev.cm.by_remote                   # the duplicate window closed


def test_sidr_unanswered_is_unreachable_and_a_wrong_qkey_is_an_addr_error():
    a = Host("10.0.0.1")
    cid = a.call("cm_create_id", ps=cma.RDMA_PS_UDP)["id"]
    a.call("cm_connect", id=cid, dst_ip="10.0.0.9", port=1, conn_param={})
    sent = 0
    while (t := a.dev.next_deadline()) is not None:
        sent += len(a.dev.take_tx())
        a.now = t
        a.dev.on_timer(t)
    sent += len(a.dev.take_tx())
    assert sent == 1 + agent.MAX_CM_RETRIES          # SIDR_REQ and resends; no REJ
    ev, = cm_events(a)
    assert E(ev["cm_event"]) == E.RDMA_CM_EVENT_UNREACHABLE and ev["status"] == -110
    # a SIDR_REP with another Q_Key than RDMA_UDP_QKEY (rdma_cm's cma_set_qkey: EINVAL)
    a2, b2, lid, cid2, qa2 = sidr_setup()
    a2.call("cm_connect", id=cid2, qp=qa2.handle, dst_ip="10.0.0.2", port=7471,
            conn_param={})
    run(a2, b2, Net(), until=0.1)
    req, = cm_events(b2)
    b2.dev.cm.by_remote[("10.0.0.1", b2.s.cm_ids[req["id"]].remote_comm_id)].qkey = 0x5555
    b2.call("cm_accept", id=req["id"], qp=ud_qp(b2, req["id"]).handle, conn_param={})
    run(a2, b2, Net())
    ev, = cm_events(a2)
    assert E(ev["cm_event"]) == E.RDMA_CM_EVENT_ADDR_ERROR and ev["status"] == -22


def test_sidr_verbs_check_their_arguments():
    a, b, lid, cid, qa = sidr_setup()
    rc = a.qp(a.cq())
    with pytest.raises(VerbsError, match="UD QP"):
        a.call("cm_connect", id=cid, qp=rc.handle, dst_ip="10.0.0.2", port=7471,
               conn_param={})
    with pytest.raises(VerbsError, match="180"):
        a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=7471,
               conn_param={}, private_data=bytes(181))
    with pytest.raises(VerbsError, match="EPROTONOSUPPORT|IPoIB"):
        a.call("cm_create_id", ps=cma.RDMA_PS_IPOIB)
    a.call("cm_connect", id=cid, qp=qa.handle, dst_ip="10.0.0.2", port=7471, conn_param={})
    run(a, b, Net(), until=0.1)
    req, = cm_events(b)
    with pytest.raises(VerbsError, match="qp_num"):
        b.call("cm_accept", id=req["id"], conn_param={})         # no QP, no qp_num
    with pytest.raises(VerbsError, match="136"):
        b.call("cm_accept", id=req["id"], qp=ud_qp(b, req["id"]).handle, conn_param={},
               private_data=bytes(137))
    b.call("cm_accept", id=req["id"], conn_param={"qp_num": 0x77})   # an external UD QP
    run(a, b, Net())
    assert cm_events(a)[0]["ud_param"]["qp_num"] == 0x77
    with pytest.raises(VerbsError, match="no connection"):
        a.call("cm_disconnect", id=cid)


# ---- external QPs (conn_param.qp_num), init_qp_attr, establish, set_option -------------
def test_external_qps_connect_through_init_qp_attr_and_establish():
    a, b = Host("10.0.0.1", seed=1), Host("10.0.0.2", seed=2)
    lid = b.call("cm_create_id")["id"]
    b.call("cm_listen", id=lid, port=5000)
    qa, qb = a.qp(a.cq()), b.qp(b.cq())
    cid = a.call("cm_create_id")["id"]
    a.call("cm_set_option", id=cid, level=cma.RDMA_OPTION_ID,
           name=cma.RDMA_OPTION_ID_ACK_TIMEOUT, value=21)
    a.call("cm_connect", id=cid, dst_ip="10.0.0.2", port=5000,
           conn_param={"qp_num": qa.qp_num})
    net = Net()
    run(a, b, net, until=0.1)
    req, = cm_events(b)
    assert req["remote_qpn"] == qa.qp_num

    def move(h, q, id_):
        for state in (abi.IBV_QPS_INIT, abi.IBV_QPS_RTR, abi.IBV_QPS_RTS):
            r = h.call("cm_init_qp_attr", id=id_, qp_state=int(state))
            q.modify(r["attr_mask"], r["attr"], h.now)
    move(b, qb, req["id"])
    b.call("cm_accept", id=req["id"], conn_param={"qp_num": qb.qp_num})
    run(a, b, net, until=a.now + 0.1)
    resp, = cm_events(a)              # no QP on the id: the consumer completes it
    assert E(resp["cm_event"]) == E.RDMA_CM_EVENT_CONNECT_RESPONSE
    assert net.log == ["REQ", "REP"]
    move(a, qa, cid)
    a.call("cm_establish", id=cid)
    run(a, b, net)
    assert net.log == ["REQ", "REP", "RTU"]
    assert kinds(cm_events(b)) == [E.RDMA_CM_EVENT_ESTABLISHED]
    assert qa.state == qb.state == abi.IBV_QPS_RTS
    assert qa.attr["dest_qp_num"] == qb.qp_num and qb.attr["dest_qp_num"] == qa.qp_num
    assert qa.requester.next_psn == qb.responder.epsn
    assert qb.requester.next_psn == qa.responder.epsn
    assert qa.attr["timeout"] == 21 and qb.attr["timeout"] == agent.LOCAL_ACK_TIMEOUT
    with pytest.raises(VerbsError, match="establish"):
        a.call("cm_establish", id=cid)
    with pytest.raises(VerbsError, match="ENOSYS"):
        a.call("cm_set_option", id=cid, level=0, name=99, value=1)
    with pytest.raises(VerbsError, match="RTR"):
        a.call("cm_init_qp_attr", id=a.call("cm_create_id")["id"], qp_state=abi.IBV_QPS_RTR)

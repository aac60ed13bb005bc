"""The CM state machine (core/cm) between two sans-I/O devices: handshakes with lost MADs,
a slow consumer (MRA), backlog, offload with bulk notification, disconnect races, abortive
close. The network is the rc_harness one, so every loss is deterministic."""
import pytest
from rc_harness import Host, run

from rnicd.core.cm import agent
from rnicd.errors import VerbsError
from rnicd.wire import abi, mad
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

"""rdma_cm between two daemons on loopback: connect/accept/reject/disconnect with private
data, the asyncio event channel, closure semantics (graceful with WRs in flight, abortive on
client death), and what QP1 does with bad MADs."""
import asyncio
import os
import signal
import socket as so
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import rnic.enums as e
from capture import capture_on_lo
from rnic.cmid import CMID, RAI_PASSIVE, AddrInfo, CMEventChannel, CMEventType, ConnParam
from rnic.device import Context
from rnic.mr import MR
from rnic.qp import QPCap, QPInitAttr
from rnic.wr import SGE, SendWR

from rnicd.wire import mad, opcodes, roce

E = CMEventType
CAP = QPCap(max_send_wr=64, max_recv_wr=64)


class Listener(threading.Thread):
    """A synchronous rdma_cm server on daemon `d`: runs `serve(cmid)` for each request."""

    def __init__(self, d, port, serve, n=1):
        super().__init__(daemon=True)
        self.d, self.port, self.serve, self.n = d, port, serve, n
        self.ready, self.results, self.error = threading.Event(), [], None
        self.start()
        assert self.ready.wait(10)

    def run(self):
        try:
            with CMID(creator=AddrInfo(src=self.d.ip, service=str(self.port),
                                       flags=RAI_PASSIVE), socket=self.d.socket) as lid:
                lid.listen()
                self.ready.set()
                for _ in range(self.n):
                    self.results.append(self.serve(lid.get_request(timeout=20)))
        except BaseException as exc:       # surfaced by join()
            self.error = exc
            self.ready.set()

    def join(self, timeout=30):
        super().join(timeout)
        assert not self.is_alive()
        if self.error:
            raise self.error
        return self.results


def client(d, port, **kw):
    return CMID(creator=AddrInfo(dst=kw.pop("dst", None) or kw.pop("peer").ip,
                                 service=str(port)),
                qp_init_attr=QPInitAttr(cap=CAP), socket=d.socket, **kw)


def test_connect_accept_private_data_send_and_disconnect(two_daemons):
    da, db = two_daemons

    def serve(cid):
        req_data = cid.private_data
        cid.create_qp(QPInitAttr(cap=CAP))
        mr = cid.reg_msgs(64)
        cid.post_recv(mr)
        cid.accept(ConnParam(private_data=b"welcome"))
        wc = cid.get_recv_comp(timeout=10)
        got = mr.read(wc.byte_len, 0)
        ev = cid.wait_event(E.RDMA_CM_EVENT_DISCONNECTED)
        state = cid.qp.query()[0].qp_state
        cid.close()
        return req_data, got, ev.event_type, state, cid.remote_ip

    srv = Listener(db, 7471, serve)
    with client(da, 7471, peer=db) as c:
        c.connect(ConnParam(private_data=b"hello from a"))
        assert c.private_data.startswith(b"welcome")
        assert len(c.private_data) == mad.private_data_len(mad.CmRep)   # the whole field
        assert c.qp.query()[0].qp_state == e.IBV_QPS_RTS
        mr = c.reg_msgs(64)
        mr.write(b"ping over rdma_cm", 17)
        c.qp.post_send(SendWR(num_sge=1, sg=[SGE(mr.buf, 17, mr.lkey)]))
        assert c.get_send_comp(timeout=10).status == e.IBV_WC_SUCCESS
        c.disconnect()
        assert c.qp.query()[0].qp_state == e.IBV_QPS_ERR
    req_data, got, ev, state, remote = srv.join()[0]
    assert req_data.startswith(b"hello from a") and len(req_data) == 56
    assert got == b"ping over rdma_cm"
    assert ev == E.RDMA_CM_EVENT_DISCONNECTED and state == e.IBV_QPS_ERR
    assert remote == da.ip


def test_reject_carries_reason_and_private_data(two_daemons):
    da, db = two_daemons

    def serve(cid):
        cid.reject(b"go away")
        return cid.private_data

    srv = Listener(db, 7472, serve)
    with client(da, 7472, peer=db) as c:
        with pytest.raises(OSError) as info:
            c.connect(ConnParam(private_data=b"may I"))
        assert info.value.errno == 111                        # ECONNREFUSED
        ev = info.value.event
        assert ev.event_type == E.RDMA_CM_EVENT_REJECTED
        assert ev.status == mad.RejReason.CONSUMER_DEFINED
        assert ev.private_data.startswith(b"go away")
    assert srv.join()[0].startswith(b"may I")


def test_no_listener_is_rejected_as_invalid_service_id(two_daemons):
    da, db = two_daemons
    with client(da, 7999, peer=db) as c:
        with pytest.raises(OSError) as info:
            c.connect()
        assert info.value.event.status == mad.RejReason.INVALID_SERVICE_ID
    with Context(socket=db.socket) as ctx:
        assert ctx.get_counters()["cm_tx_rej_invalid_service_id"] == 1


def test_unreachable_peer_times_out(rnicd, tmp_path):
    da = rnicd("a")
    dead = "127.0.0.254"          # no daemon: the REQ is resent, then UNREACHABLE
    with client(da, 7000, dst=dead) as c:
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            c.connect()
        took = time.monotonic() - t0
    assert info.value.event.event_type == E.RDMA_CM_EVENT_UNREACHABLE
    assert 3.0 < took < 15.0, took        # 7 resends 0.54 s apart, not rdma_cm's 70 s
    with Context(socket=da.socket) as ctx:
        assert ctx.get_counters()["cm_tx_retries"] == 7


@pytest.mark.asyncio
async def test_async_event_channel_under_asyncio(two_daemons):
    da, db = two_daemons
    with CMEventChannel(socket=db.socket) as sch, CMEventChannel(socket=da.socket) as cch:
        lid = CMID(creator=sch)
        lid.bind_addr(AddrInfo(src=db.ip, service="7473", flags=RAI_PASSIVE))
        lid.listen(backlog=4)
        cid = CMID(creator=cch)
        cid.resolve_addr(AddrInfo(dst=db.ip, service="7473"))
        assert (await cch.get_cm_event_async()).event_type == E.RDMA_CM_EVENT_ADDR_RESOLVED
        cid.resolve_route()
        assert (await cch.get_cm_event_async()).event_type == E.RDMA_CM_EVENT_ROUTE_RESOLVED
        cid.create_qp(QPInitAttr(cap=CAP))
        cid.connect(ConnParam(private_data=b"async"))
        req = await asyncio.wait_for(sch.get_cm_event_async(), 5)
        assert req.event_type == E.RDMA_CM_EVENT_CONNECT_REQUEST
        assert req.listen_id is lid and req.private_data.startswith(b"async")
        child = req.id
        child.create_qp(QPInitAttr(cap=CAP))
        child.accept()
        evs = await asyncio.wait_for(asyncio.gather(cch.get_cm_event_async(),
                                                    sch.get_cm_event_async()), 5)
        assert [ev.event_type for ev in evs] == [E.RDMA_CM_EVENT_ESTABLISHED] * 2
        assert evs[0].id is cid and evs[1].id is child
        child.disconnect()                                   # the passive side closes
        evs = await asyncio.wait_for(asyncio.gather(cch.get_cm_event_async(),
                                                    sch.get_cm_event_async()), 5)
        assert [ev.event_type for ev in evs] == [E.RDMA_CM_EVENT_DISCONNECTED] * 2
        for x in (cid, child, lid):
            x.close()


def test_graceful_disconnect_completes_or_flushes_every_write(two_daemons):
    """Closure semantics: WRITEs in flight when the DREQ goes out each end with a
    completion, IBV_WC_SUCCESS or IBV_WC_WR_FLUSH_ERR, none lost."""
    da, db = two_daemons
    size, n = 1 << 20, 256          # 256 MiB: far from done 5 ms in, even at GB/s
    info = {}

    def serve(cid):
        cid.create_qp(QPInitAttr(cap=CAP))
        mr = MR(cid.pd, size, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE)
        info["rkey"], info["addr"] = mr.rkey, mr.buf
        cid.accept()
        ev = cid.wait_event(E.RDMA_CM_EVENT_DISCONNECTED)
        cid.close()
        return ev.event_type

    srv = Listener(db, 7474, serve)
    with CMID(creator=AddrInfo(dst=db.ip, service="7474"),
              qp_init_attr=QPInitAttr(cap=QPCap(max_send_wr=n, max_recv_wr=1)),
              socket=da.socket) as c:
        c.connect()
        mr = MR(c.pd, size, e.IBV_ACCESS_LOCAL_WRITE)
        qp = c.qp
        for i in range(n):
            w = SendWR(wr_id=i, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                       sg=[SGE(mr.buf, size, mr.lkey)])
            w.set_wr_rdma(info["rkey"], info["addr"])
            qp.post_send(w)
        time.sleep(0.005)                     # some are on the wire, most are queued
        c.disconnect()
        wcs = []
        deadline = time.monotonic() + 10
        while len(wcs) < n and time.monotonic() < deadline:
            k, got = qp.scq.poll(64)
            wcs += got
        ok = sum(w.status == e.IBV_WC_SUCCESS for w in wcs)
        flushed = sum(w.status == e.IBV_WC_WR_FLUSH_ERR for w in wcs)
        print(f"{n} WRITEs posted: {ok} completed, {flushed} flushed")
        assert len(wcs) == n and ok + flushed == n
        assert sorted(w.wr_id for w in wcs) == list(range(n))
        assert flushed > 0                     # the disconnect did cut the stream
    assert srv.join() == [E.RDMA_CM_EVENT_DISCONNECTED]


ABORT_CLIENT = textwrap.dedent("""
    import sys, time
    from rnic.cmid import AddrInfo, CMID, ConnParam
    from rnic.qp import QPCap, QPInitAttr
    c = CMID(creator=AddrInfo(dst=sys.argv[2], service=sys.argv[3]),
             qp_init_attr=QPInitAttr(cap=QPCap(max_send_wr=4, max_recv_wr=4)),
             socket=sys.argv[1])
    c.connect()
    print("connected", flush=True)
    time.sleep(60)
""")


def test_client_death_gives_peer_disconnected_within_2s(two_daemons):
    """Abortive close: the daemon disconnects a dead client's connections for it."""
    da, db = two_daemons
    seen = {}

    def serve(cid):
        cid.create_qp(QPInitAttr(cap=CAP))
        cid.accept()
        seen["established"] = time.monotonic()
        ev = cid.wait_event(E.RDMA_CM_EVENT_DISCONNECTED, timeout=20)
        seen["disconnected"] = time.monotonic()
        cid.close()
        return ev.event_type

    srv = Listener(db, 7476, serve)
    proc = subprocess.Popen([sys.executable, "-c", ABORT_CLIENT, da.socket, db.ip, "7476"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert srv.join() == [E.RDMA_CM_EVENT_DISCONNECTED]
    finally:
        if proc.poll() is None:
            proc.kill()
    took = seen["disconnected"] - killed
    print(f"peer saw DISCONNECTED {took * 1000:.1f} ms after SIGKILL")
    assert took < 2.0
    with Context(socket=da.socket) as ctx:
        assert ctx.get_counters()["cm_aborted_by_owner_exit"] >= 1


def test_bad_mads_to_qp1_are_counted_and_dropped(two_daemons):
    da, db = two_daemons
    udp = so.socket(so.AF_INET, so.SOCK_DGRAM)
    udp.bind((da.ip, 0))
    udp.setsockopt(so.IPPROTO_IP, 10, 2)   # IP_PMTUDISC_DO: DF and IP ID 0, as the ICRC assumes
    ud = opcodes.send_opcode(opcodes.Position.ONLY, transport=opcodes.Transport.UD)
    good = mad.pack(mad.CmDreq(local_comm_id=5, remote_comm_id=6, remote_qpn=7), 1)
    cases = [(0x1234, good), (mad.GSI_QKEY, good[:100]),
             (mad.GSI_QKEY, bytes([1, 0x07, 9]) + good[3:]), (mad.GSI_QKEY, good)]
    for qkey, payload in cases:
        pkt = roce.Packet(opcode=ud, dest_qp=1, deth_qkey=qkey, deth_src_qp=1)
        udp.sendto(roce.build(pkt, payload, src_ip=da.ip, dst_ip=db.ip,
                              sport=udp.getsockname()[1], dport=4791), (db.ip, 4791))
    time.sleep(0.3)
    with Context(socket=db.socket) as ctx:
        c = ctx.get_counters()
    assert c["cm_rx_drop_bad_qkey"] == 1
    assert c["cm_rx_drop_short"] == 1
    assert c["cm_rx_drop_bad_class_version"] == 1
    assert c["cm_rx_dreq_unknown"] == 1          # answered with a DREP (IBTA 12.9.6)


def test_capture_of_connect_and_disconnect_dissects_as_ib_cm(two_daemons, tshark, tmp_path):
    """A live capture on lo: tshark names REQ, REP, RTU, DREQ, DREP and their fields match
    the two ends' QPs and the service ID of the rdma_cm port."""
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    da, db = two_daemons
    pcap = tmp_path / "cm.pcap"
    with capture_on_lo(pcap, da.ip, tshark):
        qpns = {}

        def serve(cid):
            cid.create_qp(QPInitAttr(cap=CAP))
            qpns["server"] = cid.qp.qp_num
            cid.accept()
            cid.wait_event(E.RDMA_CM_EVENT_DISCONNECTED)
            cid.close()

        srv = Listener(db, 7480, serve)
        with client(da, 7480, peer=db) as c:
            c.connect(ConnParam(private_data=b"tshark"))
            qpns["client"] = c.qp.qp_num
            c.disconnect()
        srv.join()
    cols = ["_ws.col.Info", "ip.src", "infiniband.deth.q_key", "infiniband.bth.destqp",
            "infiniband.cm.req.serviceid", "infiniband.cm.req.localqpn",
            "infiniband.cm.req", "infiniband.cm.rep.localqpn", "infiniband.cm.rep.remotecommid",
            "infiniband.cm.rtu.remotecommid", "infiniband.cm.dreq.remotecommid",
            "infiniband.cm.req.remoteqpneecn", "infiniband.cm.drsp.remotecommid"]
    cmd = [tshark, "-n", "-r", str(pcap), "-d", "udp.port==4791,infiniband", "-T", "fields",
           "-E", "separator=/t", "-E", "occurrence=f", "-Y", "infiniband.mad"]
    for col in cols:
        cmd += ["-e", col]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [dict(zip(cols, line.split("\t"), strict=True)) for line in out.splitlines()]
    print(out)
    assert [r["_ws.col.Info"] for r in rows] == [
        "CM: ConnectRequest", "CM: ConnectReply", "CM: ReadyToUse", "CM: DisconnectRequest",
        "CM: DisconnectReply"]
    req, rep, rtu, dreq, drep = rows
    assert [r["ip.src"] for r in rows] == [da.ip, db.ip, da.ip, da.ip, db.ip]
    assert all(int(r["infiniband.deth.q_key"], 0) == mad.GSI_QKEY for r in rows)
    assert all(int(r["infiniband.bth.destqp"], 0) == mad.GSI_QPN for r in rows)
    assert int(req["infiniband.cm.req.serviceid"], 0) == 0x0106 << 16 | 7480
    assert int(req["infiniband.cm.req.localqpn"], 0) == qpns["client"]
    assert int(rep["infiniband.cm.rep.localqpn"], 0) == qpns["server"]
    client_comm = int(req["infiniband.cm.req"], 0)
    assert int(rep["infiniband.cm.rep.remotecommid"], 0) == client_comm
    assert int(dreq["infiniband.cm.req.remoteqpneecn"], 0) == qpns["server"]
    assert int(drep["infiniband.cm.drsp.remotecommid"], 0) == client_comm
    assert rtu["infiniband.cm.rtu.remotecommid"] and dreq["infiniband.cm.dreq.remotecommid"]

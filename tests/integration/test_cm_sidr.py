"""rdma_cm over UD between two daemons (RDMA_PS_UDP: SIDR, IBTA 12.11), udaddy-style: the
active side resolves the service, both sides exchange UD SENDs with what the CM gave them
(the AH and remote QPN/Q_Key of the ESTABLISHED event; an AH made from the received
completion and its GRH); an unknown service and a rejecting one; a live capture that tshark
names as SIDR MADs."""
import os
import subprocess
import threading

import pytest
import rnic.enums as e
from capture import capture_on_lo
from rnic.addr import AH, GID
from rnic.cmid import (
    CMID,
    RAI_PASSIVE,
    RDMA_PS_UDP,
    RDMA_UDP_QKEY,
    AddrInfo,
    CMEvent,
    CMEventChannel,
    CMEventType,
    ConnParam,
    UDParam,
)
from rnic.device import Context
from rnic.qp import QPCap, QPInitAttr

from rnicd.wire import mad

E = CMEventType
GRH = 40
MSG = 256


def counters(d) -> dict:
    with Context(socket=d.socket) as ctx:
        return ctx.get_counters()


def next_event(channel, want):
    ev = channel.get_cm_event(timeout=10)
    assert ev is not None, f"no {want.name} within 10 s"
    assert ev.event_type == want, (ev, ev.status)
    return ev


class Pair:
    """A UD listener on daemon `db` and an active UD id on daemon `da`, both asynchronous."""

    def __init__(self, da, db, port):
        self.da, self.db, self.port = da, db, port
        self.ch_b = CMEventChannel(socket=db.socket)
        self.ch_a = CMEventChannel(socket=da.socket)
        self.lid = CMID(creator=self.ch_b, port_space=RDMA_PS_UDP)
        self.lid.bind_addr(AddrInfo(src=db.ip, service=str(port), port_space=RDMA_PS_UDP,
                                    flags=RAI_PASSIVE))
        self.lid.listen()
        self.cid = CMID(creator=self.ch_a, port_space=RDMA_PS_UDP)

    def resolve(self, port=None, data=b""):
        self.cid.resolve_addr(AddrInfo(dst=self.db.ip, service=str(port or self.port),
                                       port_space=RDMA_PS_UDP))
        next_event(self.ch_a, E.RDMA_CM_EVENT_ADDR_RESOLVED)
        self.cid.resolve_route()
        next_event(self.ch_a, E.RDMA_CM_EVENT_ROUTE_RESOLVED)
        self.cid.create_qp(QPInitAttr(cap=QPCap(max_send_wr=4, max_recv_wr=4)))
        self.cid.connect(ConnParam(private_data=data))

    def close(self):
        for obj in (self.cid, self.lid, self.ch_a, self.ch_b):
            obj.close()


def test_udaddy_exchange_between_two_daemons(two_daemons):
    da, db = two_daemons
    p = Pair(da, db, 7491)
    try:
        p.resolve(data=b"udaddy hello")
        req = next_event(p.ch_b, E.RDMA_CM_EVENT_CONNECT_REQUEST)
        assert req.private_data.startswith(b"udaddy hello") and req.remote_ip == da.ip
        child = CMID(creator=req, listen_id=p.lid)
        child.create_qp(QPInitAttr(cap=QPCap(max_send_wr=4, max_recv_wr=4)))
        assert child.qp.qp_type == e.IBV_QPT_UD
        attr, _ = child.query_qp(e.IBV_QP_QKEY | e.IBV_QP_STATE)
        assert attr.qp_state == e.IBV_QPS_RTS and attr.qkey == RDMA_UDP_QKEY
        mr_b = child.reg_msgs(GRH + MSG)
        child.post_recv(mr_b)
        child.accept(ConnParam(private_data=b"served"))
        est = next_event(p.ch_a, E.RDMA_CM_EVENT_ESTABLISHED)
        assert est.private_data.startswith(b"served")
        ud = UDParam(est)
        assert ud.qp_num == child.qpn and ud.qkey == RDMA_UDP_QKEY
        assert ud.ah_attr.is_global == 1 and ud.ah_attr.dgid == GID(db.ip).gid
        assert p.ch_b.get_cm_event(timeout=0.3) is None    # the passive side: no event
        # active -> passive, with the AH, QPN and Q_Key of the event (rdma_post_ud_send)
        mr_a = p.cid.reg_msgs(GRH + MSG)
        mr_a.write(b"c" * MSG, MSG)
        ah_a = AH(p.cid.pd, attr=ud.ah_attr)
        p.cid.post_ud_send(mr_a, ah_a, rqpn=ud.qp_num, length=MSG)
        assert p.cid.get_send_comp(timeout=10).status == e.IBV_WC_SUCCESS
        wc = child.get_recv_comp(timeout=10)
        assert wc.status == e.IBV_WC_SUCCESS and wc.byte_len == GRH + MSG
        assert wc.src_qp == p.cid.qpn and wc.wc_flags & e.IBV_WC_GRH
        assert mr_b.read(MSG, GRH) == b"c" * MSG
        # passive -> active, with an AH made from the completion and its GRH
        p.cid.post_recv(mr_a)
        ah_b = AH(child.pd, wc=wc, port_num=1, grh=mr_b.buf)
        mr_b.write(b"s" * MSG, MSG)
        child.post_ud_send(mr_b, ah_b, rqpn=wc.src_qp, length=MSG)
        assert child.get_send_comp(timeout=10).status == e.IBV_WC_SUCCESS
        wc_a = p.cid.get_recv_comp(timeout=10)
        assert wc_a.status == e.IBV_WC_SUCCESS and wc_a.src_qp == child.qpn
        assert mr_a.read(MSG, GRH) == b"s" * MSG
        for d, name in ((da, "cm_sidr_resolved"), (db, "cm_sidr_accepted")):
            assert counters(d)[name] == 1
        child.close()
    finally:
        p.close()


def test_sidr_to_an_unknown_service_and_a_reject(two_daemons):
    da, db = two_daemons
    p = Pair(da, db, 7492)
    try:
        p.resolve(port=7493)                 # nobody listens there
        ev = next_event(p.ch_a, E.RDMA_CM_EVENT_UNREACHABLE)
        assert ev.status == mad.SidrStatus.SID_NOT_SUPPORTED
        assert counters(db)["cm_tx_sidr_sid_not_supported"] == 1
        p.cid.close()
        p.cid = CMID(creator=p.ch_a, port_space=RDMA_PS_UDP)
        p.resolve()
        req = next_event(p.ch_b, E.RDMA_CM_EVENT_CONNECT_REQUEST)
        CMID(creator=req, listen_id=p.lid).reject(b"no room")
        ev = next_event(p.ch_a, E.RDMA_CM_EVENT_UNREACHABLE)
        assert ev.status == mad.SidrStatus.REJECTED and ev.private_data.startswith(b"no room")
    finally:
        p.close()


def test_synchronous_ud_ids(two_daemons):
    """rdma_create_ep with RDMA_PS_UDP: the passive id's qp_init_attr gives each request a
    UD QP; connect returns with the UD parameters, accept at once (no RTU in SIDR)."""
    da, db = two_daemons
    attr = QPInitAttr(cap=QPCap(max_send_wr=4, max_recv_wr=4))
    with CMID(creator=AddrInfo(src=db.ip, service="7494", port_space=RDMA_PS_UDP,
                               flags=RAI_PASSIVE), qp_init_attr=attr, socket=db.socket) as lid, \
            CMID(creator=AddrInfo(dst=db.ip, service="7494", port_space=RDMA_PS_UDP),
                 qp_init_attr=QPInitAttr(cap=QPCap()), socket=da.socket) as c:
        lid.listen()
        assert c.qp.qp_type == e.IBV_QPT_UD
        got = {}

        def serve():
            child = lid.get_request(timeout=10)
            got["qp_type"] = child.qp.qp_type
            child.accept()                  # returns at once: SIDR has no RTU
            got["qpn"] = child.qpn
        srv = threading.Thread(target=serve)
        srv.start()
        c.connect()
        srv.join(10)
        assert got["qp_type"] == e.IBV_QPT_UD
        assert c.ud_param.qp_num == got["qpn"] and c.ud_param.qkey == RDMA_UDP_QKEY


def test_capture_of_sidr_dissects_as_ib_cm(two_daemons, tshark, tmp_path):
    """A live capture on lo: tshark names the SIDR_REQ and SIDR_REP (its CM dissector
    has no fields for them); their bytes at the IBTA offsets match the two ends."""
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    da, db = two_daemons
    pcap = tmp_path / "sidr.pcap"
    p = Pair(da, db, 7495)
    try:
        with capture_on_lo(pcap, da.ip, tshark):
            p.resolve(data=b"tshark")
            req = next_event(p.ch_b, E.RDMA_CM_EVENT_CONNECT_REQUEST)
            child = CMID(creator=req, listen_id=p.lid)
            child.create_qp(QPInitAttr(cap=QPCap()))
            child.accept()
            next_event(p.ch_a, E.RDMA_CM_EVENT_ESTABLISHED)
            qpn = child.qpn
    finally:
        p.close()
    cols = ["_ws.col.Info", "ip.src", "infiniband.deth.q_key", "infiniband.bth.destqp",
            "infiniband.mad.transactionid", "infiniband.mad.data"]
    cmd = [tshark, "-n", "-r", str(pcap), "-d", "udp.port==4791,infiniband", "-T", "fields",
           "-E", "separator=/t", "-E", "occurrence=f", "-Y", "infiniband.mad"]
    for col in cols:
        cmd += ["-e", col]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    print(out)
    rows = [dict(zip(cols, line.split("\t"), strict=True)) for line in out.splitlines()]
    assert [r["_ws.col.Info"] for r in rows] == ["CM: ServiceIDResReq",
                                                 "CM: ServiceIDResReqResp"]
    assert [r["ip.src"] for r in rows] == [da.ip, db.ip]
    assert all(int(r["infiniband.deth.q_key"], 0) == mad.GSI_QKEY for r in rows)
    assert all(int(r["infiniband.bth.destqp"], 0) == mad.GSI_QPN for r in rows)
    assert rows[0]["infiniband.mad.transactionid"] == rows[1]["infiniband.mad.transactionid"]
    sreq, srep = (bytes.fromhex(r["infiniband.mad.data"].replace(":", "")) for r in rows)
    sid = (0x0111 << 16 | 7495).to_bytes(8, "big")          # RDMA_PS_UDP, port 7495
    assert sreq[0:4] == srep[0:4]                            # Request ID
    assert sreq[4:6] == b"\xff\xff" and sreq[8:16] == sid    # P_Key, ServiceID
    assert sreq[16:18] == b"\x00\x40"                        # rdma_cm header: IPv4
    assert sreq[16 + 36:16 + 42] == b"tshark"                # then the consumer's bytes
    assert srep[4] == mad.SidrStatus.VALID_QPN
    assert int.from_bytes(srep[8:11], "big") == qpn          # QPN
    assert srep[12:20] == sid                                # ServiceID
    assert int.from_bytes(srep[20:24], "big") == RDMA_UDP_QKEY


def test_event_without_ud_param_reads_empty():
    """UDParam of an event that carries none (RC ids) has no AH and zeros, as a zeroed
    rdma_ud_param would."""
    ud = UDParam(CMEvent.__new__(CMEvent))
    assert ud.ah_attr is None and ud.qp_num == 0 and ud.qkey == 0


def test_ece_options_and_ah_from_wc_errors(rnicd):
    """ECE answers as on a device without it; set_option's errors; an AH from a
    completion needs its GRH inside one of the context's MRs."""
    import errno

    from rnic.cm_enums import RDMA_OPTION_IB, RDMA_OPTION_IB_PATH, RDMA_OPTION_ID
    from rnic.cq import WC
    from rnic.errors import RnicError
    from rnic.qp import ECE
    d = rnicd("a")
    with CMEventChannel(socket=d.socket) as ch, CMID(creator=ch) as cid:
        cid.resolve_addr(AddrInfo(dst=d.ip, service="7496"))
        qp = cid.create_qp(QPInitAttr(cap=QPCap()))
        with pytest.raises(RnicError) as ex:
            qp.query_ece()
        assert ex.value.error_code == errno.EOPNOTSUPP
        with pytest.raises(RnicError) as ex:
            qp.set_ece(ECE())
        assert ex.value.error_code == errno.EOPNOTSUPP
        with pytest.raises(RnicError) as ex:       # librdmacm: not on an id with a QP
            cid.get_remote_ece()
        assert ex.value.error_code == errno.EINVAL
        with pytest.raises(RnicError) as ex:
            cid.set_option(RDMA_OPTION_IB, RDMA_OPTION_IB_PATH, 0, 1)
        assert ex.value.error_code == errno.EOPNOTSUPP
        with pytest.raises(RnicError) as ex:
            cid.set_option(RDMA_OPTION_ID, 77, 0, 1)
        assert ex.value.error_code == errno.ENOSYS
        with pytest.raises(RnicError) as ex:
            cid.set_option(RDMA_OPTION_ID, 3, 32, 1)      # ACK timeout codes are 0..31
        assert ex.value.error_code == errno.EINVAL
        mr = cid.reg_msgs(64)
        wc = WC(wc_flags=e.IBV_WC_GRH)
        with pytest.raises(RnicError, match="not inside a memory region"):
            AH(cid.pd, wc=wc, grh=mr.buf + 32)            # 40 bytes would run past the MR
        with pytest.raises(RnicError, match="no GRH"):
            AH(cid.pd, wc=WC(), grh=mr.buf)
        with pytest.raises(RnicError, match="neither"):
            AH(cid.pd, wc=wc, grh=mr.buf)                  # zeros: no IP header
        grh = bytes(20) + bytes([0x45, 0xB8]) + bytes(10) + bytes([10, 1, 2, 3]) + bytes(4)
        ah = AH(cid.pd, wc=wc, grh=grh)
        assert ah.attr.dgid == GID("10.1.2.3").gid and ah.attr.traffic_class == 0xB8

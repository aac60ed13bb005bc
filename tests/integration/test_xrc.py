"""XRC between two daemons, as ibv_xsrq_pingpong uses it (IBTA Annex A14): a server with one
XRC domain, several XRC SRQs (each with its own CQ) and one TGT QP per client connection;
clients whose INI QPs send to each SRQ by number. Data and completions are checked, the
completions on the CQ of the SRQ the sender named."""
import errno
import os

import pytest
import rnic.enums as e
from rnic.addr import AHAttr, GlobalRoute
from rnic.cq import CQ
from rnic.device import Context
from rnic.mr import MR
from rnic.pd import PD
from rnic.pyverbs_error import PyverbsRDMAError
from rnic.qp import QP, QPAttr, QPCap, QPInitAttrEx
from rnic.srq import SRQ, SrqInitAttrEx
from rnic.wr import SGE, RecvWR, SendWR
from rnic.xrcd import XRCD, XRCDInitAttr

from tests.rc_pair import poll_n

NSRQ, NCLIENTS, MSG = 3, 2, 3000          # MSG > MTU: multi-packet SENDs
XF = e.IBV_XRCD_INIT_ATTR_FD | e.IBV_XRCD_INIT_ATTR_OFLAGS


def xrc_srq(ctx, pd, xrcd, cq, max_wr=64):
    a = SrqInitAttrEx(max_wr=max_wr, max_sge=1)
    a.srq_type, a.pd, a.xrcd, a.cq = e.IBV_SRQT_XRC, pd, xrcd, cq
    a.comp_mask = (e.IBV_SRQ_INIT_ATTR_TYPE | e.IBV_SRQ_INIT_ATTR_PD | e.IBV_SRQ_INIT_ATTR_CQ
                   | e.IBV_SRQ_INIT_ATTR_XRCD)
    return SRQ(ctx, a)


def to_rts(qp, peer_qpn, peer_gid, my_psn, peer_psn):
    attr = QPAttr(port_num=1)
    attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                            | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_ATOMIC)
    attr.path_mtu, attr.dest_qp_num = e.IBV_MTU_1024, peer_qpn
    attr.rq_psn, attr.sq_psn = peer_psn, my_psn
    attr.max_dest_rd_atomic = attr.max_rd_atomic = 4
    attr.min_rnr_timer, attr.timeout, attr.retry_cnt, attr.rnr_retry = 1, 12, 7, 7
    attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=GlobalRoute(dgid=peer_gid, sgid_index=0))
    qp.to_rts(attr)


class Server:
    def __init__(self, daemon, tmp_path):
        self.ctx = Context(name="rnic0", socket=daemon.socket)
        self.pd = PD(self.ctx)
        self.mr = MR(self.pd, NSRQ * NCLIENTS * 4 * 4096, e.IBV_ACCESS_LOCAL_WRITE)
        self.fd = os.open(tmp_path / "xrc-domain", os.O_RDONLY | os.O_CREAT, 0o600)
        self.xrcd = XRCD(self.ctx, XRCDInitAttr(XF, os.O_CREAT, self.fd))
        self.cqs = [CQ(self.ctx, 64) for _ in range(NSRQ)]
        self.srqs = [xrc_srq(self.ctx, self.pd, self.xrcd, cq) for cq in self.cqs]
        self.gid = self.ctx.query_gid(1, 0)

    def tgt(self):
        return QP(self.ctx, QPInitAttrEx(qp_type=e.IBV_QPT_XRC_RECV,
                                         comp_mask=e.IBV_QP_INIT_ATTR_XRCD, xrcd=self.xrcd))


class Client:
    def __init__(self, daemon):
        self.ctx = Context(name="rnic0", socket=daemon.socket)
        self.pd = PD(self.ctx)
        self.mr = MR(self.pd, 1 << 16, e.IBV_ACCESS_LOCAL_WRITE)
        self.cq = CQ(self.ctx, 64)
        self.qp = QP(self.ctx, QPInitAttrEx(
            qp_type=e.IBV_QPT_XRC_SEND, comp_mask=e.IBV_QP_INIT_ATTR_PD, pd=self.pd,
            scq=self.cq, cap=QPCap(max_send_wr=32, max_recv_wr=0, max_recv_sge=0)))
        self.gid = self.ctx.query_gid(1, 0)


def test_xsrq_pingpong(rnicd, tmp_path):
    srv_d, cli_d = rnicd("xs"), rnicd("xc")
    s = Server(srv_d, tmp_path)
    clients = [Client(cli_d) for _ in range(NCLIENTS)]
    try:
        nums = [srq.get_srq_num() for srq in s.srqs]
        assert len(set(nums)) == NSRQ and all(0 < n < 1 << 24 for n in nums)
        for i, c in enumerate(clients):              # one TGT QP per client connection
            t = s.tgt()
            to_rts(t, c.qp.qp_num, c.gid, 0x100 + i, 0x200 + i)
            to_rts(c.qp, t.qp_num, s.gid, 0x200 + i, 0x100 + i)
            c.tgt = t
        slot = 0
        expect = {k: [] for k in range(NSRQ)}
        for srq in s.srqs:
            for _ in range(NCLIENTS):
                srq.post_recv(RecvWR(wr_id=1000 + slot, num_sge=1,
                                     sg=[SGE(s.mr.buf + slot * 4096, 4096, s.mr.lkey)]))
                slot += 1
        for i, c in enumerate(clients):
            for k, n in enumerate(nums):
                msg = bytes([0x30 + 16 * i + k]) * MSG
                off = k * 4096
                c.mr.write(msg, MSG, off)
                wr = SendWR(wr_id=10 * i + k, opcode=e.IBV_WR_SEND, num_sge=1,
                            sg=[SGE(c.mr.buf + off, MSG, c.mr.lkey)])
                wr.set_qp_type_xrc(n)
                c.qp.post_send(wr)
                expect[k].append((msg, c.tgt.qp_num))
        for c in clients:
            wcs = poll_n(c.cq, NSRQ)
            assert sorted(w.wr_id % 10 for w in wcs) == list(range(NSRQ))
            assert all(w.status == e.IBV_WC_SUCCESS for w in wcs)
        for k, cq in enumerate(s.cqs):                # each SRQ's completions on its CQ
            wcs = poll_n(cq, NCLIENTS)
            assert all(w.status == e.IBV_WC_SUCCESS and w.opcode == e.IBV_WC_RECV
                       and w.byte_len == MSG for w in wcs)
            got = sorted((s.mr.read(MSG, (w.wr_id - 1000) * 4096), w.qp_num) for w in wcs)
            assert got == sorted(expect[k])
            assert all(NCLIENTS * k <= w.wr_id - 1000 < NCLIENTS * (k + 1) for w in wcs)
            assert cq.poll(1)[0] == 0                 # nothing more, nothing elsewhere
    finally:
        for c in clients:
            c.ctx.close()
        s.ctx.close()
        os.close(s.fd)


@pytest.mark.parametrize("how", ["bad_srqn", "other_domain"])
def test_bad_srq_number_and_domain_mismatch(rnicd, tmp_path, how):
    """The XRCETH names no SRQ, or an SRQ of another XRC domain: NAK Invalid Request; the
    sender's WR completes with IBV_WC_REM_INV_REQ_ERR, the SRQs keep their WQEs."""
    srv_d, cli_d = rnicd("xbs"), rnicd("xbc")
    s = Server(srv_d, tmp_path)
    c = Client(cli_d)
    try:
        t = s.tgt()
        to_rts(t, c.qp.qp_num, c.gid, 1, 2)
        to_rts(c.qp, t.qp_num, s.gid, 2, 1)
        if how == "bad_srqn":
            srqn = max(srq.get_srq_num() for srq in s.srqs) + 1000
        else:
            other = XRCD(s.ctx, XRCDInitAttr(XF, 0, -1))          # a private domain
            srqn = xrc_srq(s.ctx, s.pd, other, s.cqs[0]).get_srq_num()
        s.srqs[0].post_recv(RecvWR(wr_id=5, num_sge=1, sg=[SGE(s.mr.buf, 4096, s.mr.lkey)]))
        wr = SendWR(wr_id=9, num_sge=1, sg=[SGE(c.mr.buf, 64, c.mr.lkey)])
        wr.set_qp_type_xrc(srqn)
        c.qp.post_send(wr)
        (w,) = poll_n(c.cq, 1)
        assert (w.wr_id, w.status) == (9, e.IBV_WC_REM_INV_REQ_ERR)
        assert s.cqs[0].poll(1)[0] == 0
        assert s.ctx.get_counters(qp=t)["xrc_srqn_err"] == 1
    finally:
        c.ctx.close()
        s.ctx.close()
        os.close(s.fd)


def test_xrc_verbs_errors(rnicd, tmp_path):
    """ibv_open_xrcd's flags and the XRC objects' rules, each with its errno."""
    d = rnicd("xe")
    with Context(name="rnic0", socket=d.socket) as ctx, PD(ctx) as pd:
        path = tmp_path / "dom"
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(PyverbsRDMAError) as ex:        # no domain yet, no O_CREAT
                XRCD(ctx, XRCDInitAttr(XF, 0, fd))
            assert ex.value.error_code == errno.EAGAIN
            with pytest.raises(PyverbsRDMAError) as ex:        # FD and OFLAGS are required
                XRCD(ctx, XRCDInitAttr(e.IBV_XRCD_INIT_ATTR_FD, 0, fd))
            assert ex.value.error_code == errno.EINVAL
            x = XRCD(ctx, XRCDInitAttr(XF, os.O_CREAT, fd))
            with pytest.raises(PyverbsRDMAError) as ex:        # O_EXCL: it exists now
                XRCD(ctx, XRCDInitAttr(XF, os.O_CREAT | os.O_EXCL, fd))
            assert ex.value.error_code == errno.EINVAL
            same = XRCD(ctx, XRCDInitAttr(XF, 0, fd))          # shared through the file
            cq = CQ(ctx, 8)
            srq = xrc_srq(ctx, pd, x, cq)
            assert srq.get_srq_num() > 0
            with pytest.raises(PyverbsRDMAError) as ex:
                SRQ(pd, SrqInitAttrEx(max_wr=4)).get_srq_num()  # a basic SRQ has no number
            assert ex.value.error_code == errno.EOPNOTSUPP
            t = QP(ctx, QPInitAttrEx(qp_type=e.IBV_QPT_XRC_RECV,
                                     comp_mask=e.IBV_QP_INIT_ATTR_XRCD, xrcd=same))
            with pytest.raises(PyverbsRDMAError) as ex:
                t.post_send(SendWR())
            assert ex.value.error_code == errno.EINVAL
            with pytest.raises(PyverbsRDMAError) as ex:
                t.post_recv(RecvWR())
            assert ex.value.error_code == errno.EINVAL
            ini = QP(ctx, QPInitAttrEx(qp_type=e.IBV_QPT_XRC_SEND,
                                       comp_mask=e.IBV_QP_INIT_ATTR_PD, pd=pd, scq=cq,
                                       cap=QPCap(max_send_wr=4, max_recv_wr=0)))
            assert ini.query(0)[1].qp_type == e.IBV_QPT_XRC_SEND
            x.close()                                           # closes its SRQ first
            assert srq.closed and not t.closed
            same.close()
            assert t.closed
        finally:
            os.close(fd)

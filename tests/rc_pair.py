"""Two contexts on two daemons with a connected RC (or UC) QP pair, the way an app sets it
up (pyverbs shape: Context, PD, MR, CQ, QP, modify through to_init/to_rtr/to_rts, which pass
the QP type's masks)."""
from __future__ import annotations

import time

import rnic.enums as e
from rnic.addr import AHAttr, GlobalRoute
from rnic.cq import CQ
from rnic.device import Context
from rnic.mr import MR
from rnic.pd import PD
from rnic.qp import QP, QPAttr, QPCap, QPInitAttr
from rnic.srq import SRQ, SrqAttr, SrqInitAttr

from rnicd.wire.abi import RC_ACCESS

ACCESS = RC_ACCESS


class Side:
    def __init__(self, daemon, mr_size=1 << 20, cqe=1024, wr=256, srq=None, mr_access=ACCESS,
                 sge=4, inline=64, qp_type=e.IBV_QPT_RC, own_srq=False):
        self.ctx = Context(name="rnic0", socket=daemon.socket)
        self.pd = PD(self.ctx)
        if own_srq:                 # an SRQ of this side's PD serves the QP's receives
            srq = SRQ(self.pd, SrqInitAttr(SrqAttr(max_wr=wr, max_sge=sge)))
        self.mr = MR(self.pd, mr_size, mr_access)
        self.cq = CQ(self.ctx, cqe, None, None, 0)
        cap = QPCap(max_send_wr=wr, max_recv_wr=wr, max_send_sge=sge, max_recv_sge=sge,
                    max_inline_data=inline)
        self.qp = QP(self.pd, QPInitAttr(qp_type=qp_type, scq=self.cq, rcq=self.cq,
                                         srq=srq, cap=cap, sq_sig_all=0))
        self.gid = self.ctx.query_gid(1, 0)

    def close(self):
        self.ctx.close()


def connect_one(me: Side, peer_qpn: int, peer_gid, my_psn: int, peer_psn: int,
                mtu=e.IBV_MTU_1024, timeout=12, retry_cnt=7, rnr_retry=7, min_rnr_timer=1,
                qp_access=ACCESS):
    """Take me.qp through INIT, RTR and RTS towards (peer_gid, peer_qpn)."""
    attr = QPAttr()
    attr.qp_access_flags = qp_access
    attr.path_mtu = mtu
    attr.dest_qp_num = peer_qpn
    attr.rq_psn = peer_psn
    attr.sq_psn = my_psn
    attr.max_dest_rd_atomic = 4
    attr.max_rd_atomic = 4
    attr.min_rnr_timer = min_rnr_timer
    attr.timeout = timeout
    attr.retry_cnt = retry_cnt
    attr.rnr_retry = rnr_retry
    attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=GlobalRoute(dgid=peer_gid, sgid_index=0))
    me.qp.to_init(attr)
    me.qp.to_rtr(attr)
    me.qp.to_rts(attr)


def connect(a: Side, b: Side, psn=(0x111, 0x222), **kw):
    connect_one(a, b.qp.qp_num, b.gid, psn[0], psn[1], **kw)
    connect_one(b, a.qp.qp_num, a.gid, psn[1], psn[0], **kw)


def poll_n(cq, n, timeout=30.0):
    """Poll until n completions arrived (busy-poll with a short sleep)."""
    wcs = []
    deadline = time.monotonic() + timeout
    while len(wcs) < n:
        got, batch = cq.poll(min(64, n - len(wcs)))
        if got:
            wcs.extend(batch)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(wcs)} of {n} completions after {timeout}s")
        time.sleep(0.0002)
    return wcs

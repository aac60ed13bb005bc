"""XRC QPs (IBTA Annex A14, eXtended Reliable Connected transport).

An XRC connection is an RC connection between an INI QP (send side only: it has a PD, a send
CQ and an SQ, no receive queue) and a TGT QP (receive side only: it has an XRC domain, no
PD, no CQ, no queue of its own). Every request carries an XRCETH naming an XRC SRQ of the
responder; the TGT QP serves it with that SRQ (A14.2.2): its receive WQEs, its CQ, and its
PD for the memory checks (lkeys of its WQEs, rkeys of RDMA and atomic requests). The SRQ must
belong to the TGT QP's XRC domain.

The transport is RC's (PSNs, ACKs, retries, the same requester/completer/responder code) with
the XRC opcodes (0xA0 | RC's) and the XRCETH; the data plane builds INI packets and ACKs with
them (rnic_dp_qp.xrc) and leaves every received XRC packet to core/ (dp.fast stays 0).
"""
from __future__ import annotations

from rnicd.core.roce.qp import RCQP
from rnicd.core.roce.responder import Responder
from rnicd.wire.abi import QPType, WCStatus

XRC_INI, XRC_TGT = QPType.IBV_QPT_XRC_SEND, QPType.IBV_QPT_XRC_RECV


class XRCResponder(Responder):
    """The TGT QP's responder: the XRCETH picks the SRQ (and so the PD and CQ) that serves a
    message. Checks in IBTA's order: PSN and opcode sequence first (on_request), then the
    XRCETH (an SRQ number that names no XRC SRQ of this QP's domain: NAK Invalid Request, the
    QP goes to the error state), then resources, length and access with that SRQ's PD."""

    def __init__(self, qp):
        super().__init__(qp)
        self.srqn: int | None = None        # the XRCETH of the message in progress

    def reset_psn(self, psn: int):
        super().reset_psn(psn)
        self.srqn = None

    def _target(self, pkt, info, now) -> bool:
        qp = self.qp
        if not info.is_first:
            if pkt.xrc_srqn != self.srqn:       # every packet of a message names one SRQ
                qp.counters.inc("xrc_srqn_err")
                self._invalid(pkt, now, f"XRCETH SRQ {pkt.xrc_srqn:#x} inside a message "
                              f"for SRQ {self.srqn:#x}")
                return False
            return True
        srq = qp.device.xrc_srq(pkt.xrc_srqn, qp.xrcd.domain)
        if srq is None:
            qp.counters.inc("xrc_srqn_err")
            self._invalid(pkt, now, f"XRCETH names SRQ {pkt.xrc_srqn:#x}: no XRC SRQ of "
                          "this QP's XRC domain")
            return False
        qp.bind(srq)
        self.srqn = pkt.xrc_srqn
        return True

    def _duplicate(self, pkt, info, now):
        """A duplicate READ is re-executed with the PD of the SRQ it names (A14.2.2); one
        naming no SRQ of the domain is dropped and counted (nothing was executed for it)."""
        qp = self.qp
        srq = qp.device.xrc_srq(pkt.xrc_srqn, qp.xrcd.domain) if info.xrceth else None
        if srq is None:
            qp.counters.inc("xrc_srqn_err")
            return
        saved = qp.pd
        qp.pd, qp.dp.pd = srq.pd, srq.pd.uid
        try:
            super()._duplicate(pkt, info, now)
        finally:
            qp.pd = saved
            qp.dp.pd = saved.uid if saved is not None else 0

    def _end_message(self):
        super()._end_message()
        self.srqn = None


class XRCQP(RCQP):
    """An XRC INI (qp_type IBV_QPT_XRC_SEND) or TGT (IBV_QPT_XRC_RECV) QP. The INI QP is an RC
    requester/completer whose packets carry the XRCETH of each WQE's remote_srqn; the TGT QP
    an RC responder whose SRQ, PD and CQ come from each message's XRCETH (bind())."""

    def __init__(self, device, owner, handle: int, qp_num: int, pd, send_cq, xrcd, sq_ring,
                 cap, sq_sig_all: bool, qp_type: int):
        super().__init__(device, owner, handle, qp_num, pd, send_cq, None, None, sq_ring,
                         None, cap, sq_sig_all, qp_type)
        self.xrcd = xrcd                    # TGT: its domain handle; INI: None
        self.dp.xrc = 1
        if qp_type == XRC_TGT:
            # receive WQEs come from the XRC SRQs: room for the largest SGE list one can hold
            n = device.limits.max_srq_sge
            self._recv_pieces = device.native.shared_new("struct rnic_dp_piece[]", n)
            self.dp.recv_pieces, self.dp.recv_max_sge = self._recv_pieces, n
            self.responder = XRCResponder(self)

    @property
    def is_target(self) -> bool:
        return self.qp_type == XRC_TGT

    def transition(self, new, reason: str, now: float):
        super().transition(new, reason, now)
        self.dp.fast = 0                    # the receive fast path knows no XRC opcode
        if self.is_target:
            self.dp.send_ok = 0             # a TGT QP has no send queue (A14.2.3)

    def bind(self, srq):
        """Serve the message now starting with this XRC SRQ: its WQEs, CQ and PD."""
        dp = self.dp
        self.srq, self.pd, self.recv_cq = srq, srq.pd, srq.cq
        dp.pd, dp.rcq, dp.recv_max_sge = srq.pd.uid, srq.cq.dp, srq.max_sge

    def unbind(self, srq, now: float):
        """The XRC SRQ goes away: a message it was serving is given up (its WQE completes
        with a flush error); the next packet of it is out of sequence (NAK Invalid Request)."""
        if self.srq is not srq:
            return
        self.responder.abandon_send(WCStatus.IBV_WC_WR_FLUSH_ERR)
        self.responder._end_message()
        self.srq, self.pd = None, None
        self.dp.pd = 0

    def complete_recv(self, wr_id, status, opcode, byte_len=0, imm=None, solicited=False,
                      inv=None):
        if self.recv_cq is None:            # nothing bound: nothing was taken
            return
        super().complete_recv(wr_id, status, opcode, byte_len, imm, solicited, inv)

    def query(self) -> dict:
        a = super().query()
        a["cap"] = vars(self.cap).copy()
        return a


def check_request_target(qp, info) -> bool:
    """An XRC INI QP takes responses only, a TGT QP requests only (A14.2.3)."""
    return info.is_request == (qp.qp_type == XRC_TGT)


"""A connected (RC or UC) queue pair: attributes, state, and the three engines of the rxe
split (requester sends requests, responder serves the peer's requests, completer retires
ours). UC (IBTA 9.8) shares all of it: the data plane's rnic_dp_qp.unreliable makes the
requester complete a WQE once its last packet is sent and never owe an ACK, and UC's
responder (core/roce/uc.py) drops what RC would NAK.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from rnicd.core.qp_state import ATTR_FIELD, check_modify
from rnicd.core.resources import CQ, PD, SRQ, CQEntry, RecvQueue
from rnicd.core.roce.completer import Completer
from rnicd.core.roce.dpstate import DP_COUNTERS, dp_own_rq
from rnicd.core.roce.requester import Requester
from rnicd.core.roce.responder import Responder
from rnicd.core.roce.uc import UCResponder
from rnicd.errors import einval
from rnicd.wire.abi import EventType, QPAttrMask, QPState, QPType, WCOpcode, WCStatus, mtu_bytes
from rnicd.wire.roce import ipv4_of_gid, timeout_seconds

log = logging.getLogger("rnicd.qp")

S = QPState


@dataclass
class QPCap:
    max_send_wr: int
    max_recv_wr: int
    max_send_sge: int
    max_recv_sge: int
    max_inline_data: int


class RCQP:
    """The device's state for one RC or UC QP. Sans-I/O: packets go out through
    device.emit()."""

    def __init__(self, device, owner, handle: int, qp_num: int, pd: PD, send_cq: CQ,
                 recv_cq: CQ, srq: SRQ | None, sq_ring, rq: RecvQueue | None, cap: QPCap,
                 sq_sig_all: bool, qp_type: int):
        self.device = device
        self.owner = owner
        self.handle = handle
        self.qp_num = qp_num
        self.qp_type = qp_type
        self.pd = pd
        self.send_cq = send_cq
        self.recv_cq = recv_cq
        self.srq = srq
        self.sq_ring = sq_ring
        self.rq = rq
        self.cap = cap
        self.sq_sig_all = sq_sig_all
        self.state = S.IBV_QPS_RESET
        # attributes (ibv_qp_attr names)
        self.attr = {
            "qp_state": S.IBV_QPS_RESET, "path_mtu": 3, "dest_qp_num": 0, "rq_psn": 0,
            "sq_psn": 0, "qp_access_flags": 0, "pkey_index": 0, "port_num": 1, "qkey": 0,
            "timeout": 14, "retry_cnt": 7, "rnr_retry": 7, "min_rnr_timer": 12,
            "max_rd_atomic": 1, "max_dest_rd_atomic": 1, "ah_attr": None,
            "path_mig_state": 0, "en_sqd_async_notify": 0, "sq_draining": 0,
        }
        self.peer_ip: str | None = None        # from ah_attr's dgid (IPv4-mapped)
        self.cm_id = None                       # the CM connection driving it, if any
        # hard state shared with the data plane (struct rnic_dp_qp): the responder's PSN,
        # MSN and message in progress live there, and nowhere else
        ffi = device.native.ffi
        recv_sge = srq.max_sge if srq is not None else cap.max_recv_sge   # may be 0
        self._recv_pieces = device.native.shared_new("struct rnic_dp_piece[]", max(1, recv_sge))
        self.reliable = qp_type != QPType.IBV_QPT_UC      # RC and XRC (UC: 9.8)
        self.dp = device.native.shared_new("struct rnic_dp_qp *", {
            "qpn": qp_num, "pd": pd.uid if pd is not None else 0,
            "mtu": mtu_bytes(self.attr["path_mtu"]), "unreliable": int(not self.reliable),
            "recv_pieces": self._recv_pieces, "recv_max_sge": recv_sge,
            "rcq": recv_cq.dp if recv_cq is not None else ffi.NULL})   # XRC: per message
        if rq is not None:
            dp_own_rq(self.dp, rq, ffi)
        self.requester = Requester(self)
        self.completer = Completer(self)
        self.responder = Responder(self) if self.reliable else UCResponder(self)
        self.counters = device.counters.child()

    # ---- attributes -------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        return mtu_bytes(self.attr["path_mtu"])

    def modify(self, attr_mask: int, attr: dict, now: float):
        new = check_modify(self.qp_type, self.state, attr_mask, attr, self.device.qp_limits)
        if attr_mask & QPAttrMask.IBV_QP_AV:
            peer_ip = ipv4_of_gid(attr["ah_attr"]["grh"]["dgid"])
            if peer_ip is None:
                raise einval("ah_attr.grh.dgid must be an IPv4-mapped GID (::ffff:a.b.c.d): "
                             "this device speaks RoCEv2 over IPv4")
            self.peer_ip = peer_ip
        for bit, name in ATTR_FIELD.items():          # the attributes the mask names
            if attr_mask & bit and name in self.attr and name != "qp_state":
                self.attr[name] = attr[name]
        dp = self.dp
        dp.mtu = self.mtu
        dp.access = self.attr["qp_access_flags"]
        dp.dest_qpn = self.attr["dest_qp_num"]
        dp.retry_cnt, dp.rnr_retry = self.attr["retry_cnt"], self.attr["rnr_retry"]
        dp.max_rd_atomic = self.attr["max_rd_atomic"]
        dp.max_dest_rd_atomic = self.attr["max_dest_rd_atomic"]
        # UC has no ACK timeout: nothing is ever resent (IBTA 9.8)
        dp.timeout_s = (timeout_seconds(self.attr["timeout"]) or 0.0) if self.reliable else 0.0
        if self.peer_ip is not None:
            dp.peer_ip_be = self.device.native.ipv4_be(self.peer_ip)
        if attr_mask & QPAttrMask.IBV_QP_SQ_PSN:
            self.requester.reset_psn(attr["sq_psn"])
            self.completer.reset_psn(attr["sq_psn"])
        if attr_mask & QPAttrMask.IBV_QP_RETRY_CNT:
            self.completer.retry_left = attr["retry_cnt"]
        if attr_mask & QPAttrMask.IBV_QP_RNR_RETRY:
            self.completer.rnr_left = attr["rnr_retry"]
        if attr_mask & QPAttrMask.IBV_QP_RQ_PSN:
            self.responder.reset_psn(attr["rq_psn"])
        if new != self.state:
            self.transition(new, "modify_qp", now)

    def transition(self, new: QPState, reason: str, now: float):
        old, self.state = self.state, new
        self.attr["qp_state"] = new
        # the data plane serves only a QP that accepts requests (IBTA 10.3.1: RTR and up)
        self.dp.fast = new in (S.IBV_QPS_RTR, S.IBV_QPS_RTS, S.IBV_QPS_SQD)
        self.dp.send_ok = new == S.IBV_QPS_RTS
        log.debug("qp %d: %s -> %s (%s)", self.qp_num, old.name, new.name, reason)
        if new == S.IBV_QPS_ERR:
            self.responder.stop_reads()
            self.flush_all()
        elif new == S.IBV_QPS_RESET:
            self.requester.reset()
            self.responder.reset()
            for ring in (self.sq_ring, self.rq.ring if self.rq is not None else None):
                if ring is not None:
                    ring.hdr.error = 0      # no longer in Error: posts need no flush
        elif new == S.IBV_QPS_RTS:
            self.requester.pump(now)

    def fatal(self, reason: str, now: float, event=EventType.IBV_EVENT_QP_FATAL):
        """An error that ends the connection (IBTA 10.3.1: transition to Error)."""
        if self.state == S.IBV_QPS_ERR:
            return
        log.info("qp %d: error: %s", self.qp_num, reason)
        self.device.post_event(self.owner, {"type": int(event), "qp_num": self.qp_num})
        self.transition(S.IBV_QPS_ERR, reason, now)

    def flush_all(self):
        """IBTA 10.8.3: in Error, every outstanding WR completes with IBV_WC_WR_FLUSH_ERR:
        the receive WQE of a SEND being received (or kept by UC) first, it was taken first."""
        self.requester.flush()
        self.responder.abandon_send(WCStatus.IBV_WC_WR_FLUSH_ERR)
        self.flush_rq()

    def flush_rq(self):
        if self.rq is None:
            return          # an SRQ's WQEs belong to the SRQ, not to this QP
        while (wqe := self.rq.take()) is not None:
            self.complete_recv(wqe.wr_id, WCStatus.IBV_WC_WR_FLUSH_ERR, WCOpcode.IBV_WC_RECV)
        self.rq.ring.hdr.error = 1

    def destroy(self):
        """Drop every reference into client memory (in-flight WQEs, the message being
        received), so that the regions can be unmapped now rather than at the next GC."""
        self.state = S.IBV_QPS_RESET
        self.dp.fast = self.dp.send_ok = 0
        self.requester.reset()
        self.responder.reset()
        self.completer.retrans_at = None
        self.completer._rnr_wait(None)

    # ---- receive side ------------------------------------------------------------------
    def take_recv(self):
        """Next receive WQE from the RQ or the SRQ, or None (-> RNR)."""
        if self.srq is not None:
            wqe, limit_hit = self.srq.take()
            if limit_hit:
                self.device.post_event(self.srq.owner, {
                    "type": int(EventType.IBV_EVENT_SRQ_LIMIT_REACHED), "srq": self.srq.handle})
            return wqe
        return self.rq.take() if self.rq is not None else None

    def complete_recv(self, wr_id, status, opcode, byte_len=0, imm=None, solicited=False,
                      inv=None):
        e = CQEntry(wr_id=wr_id, status=status, opcode=opcode, byte_len=byte_len,
                    qp_num=self.qp_num, src_qp=self.attr["dest_qp_num"], solicited=solicited)
        if imm is not None:
            e.imm_data = imm
            e.wc_flags = 2      # IBV_WC_WITH_IMM
        if inv is not None:     # IBV_WC_WITH_INV: invalidated_rkey shares imm_data's place
            e.imm_data = inv
            e.wc_flags = 8
        self.device.complete(self.recv_cq, e)

    def complete_send(self, wr_id, status, opcode, byte_len=0):
        self.device.complete(self.send_cq, CQEntry(
            wr_id=wr_id, status=status, opcode=opcode, byte_len=byte_len, qp_num=self.qp_num))

    # ---- I/O hooks ---------------------------------------------------------------------
    def emit(self, pkt, payload=b""):
        self.device.emit(self, pkt, payload)

    def pump(self, now: float):
        if self.state == S.IBV_QPS_ERR:
            self.flush_rq()     # receives posted after the QP entered Error (IBTA 10.8.3)
        self.requester.pump(now)

    def deadline(self) -> float | None:
        d = [t for t in (self.completer.deadline, self.responder.deadline) if t is not None]
        return min(d) if d else None

    def on_timer(self, now: float):
        self.completer.on_timer(now)

    def counter_snapshot(self) -> dict[str, int]:
        snap = self.counters.snapshot()
        snap["dp_fast_pkts"] = self.dp.fast_pkts
        for name in DP_COUNTERS:
            if n := getattr(self.dp, name):
                snap[name] = snap.get(name, 0) + n
        return dict(sorted(snap.items()))

    def query(self) -> dict:
        a = dict(self.attr)
        a["qp_state"] = int(self.state)
        a["cur_qp_state"] = int(self.state)
        a["sq_psn"] = self.requester.next_psn
        a["rq_psn"] = self.responder.epsn
        a["cap"] = vars(self.cap).copy()
        return a


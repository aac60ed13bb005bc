"""RC completer: consumes the responder's ACKs, NAKs, READ responses and atomic ACKs,
retires our WQEs, and runs the retransmit and RNR timers (IBTA 9.7.5 requester side).

`una` is the oldest PSN not yet acknowledged or answered. An ACK of PSN p covers every
request up to p (coalesced ACKs, 9.7.5.1.2); a READ response or atomic ACK implicitly
acknowledges every earlier request; an ACK that covers a READ or atomic whose response has
not arrived means that response was lost, so the READ is re-issued from where its data stops.
"""
from __future__ import annotations

import errno

from rnicd import native
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import QPState, WCStatus
from rnicd.wire.roce import psn_add

from .dpstate import dp_field

lib = native.lib

NAK_STATUS = {  # IBTA 9.7.5.2.4 NAK codes -> requester completion status (11.6.2)
    roce.NAK_INVALID_REQUEST: WCStatus.IBV_WC_REM_INV_REQ_ERR,
    roce.NAK_REMOTE_ACCESS: WCStatus.IBV_WC_REM_ACCESS_ERR,
    roce.NAK_REMOTE_OPERATIONAL: WCStatus.IBV_WC_REM_OP_ERR,
}


class Completer:
    una = dp_field("una", "oldest PSN not yet acknowledged or answered")
    retry_left = dp_field("retry_left", "transport retries left since the last progress")
    rnr_left = dp_field("rnr_left", "RNR retries left since the last progress")

    def __init__(self, qp):
        self.qp = qp
        self.dp = qp.dp
        self.rnr_until: float | None = None

    def reset_psn(self, psn: int):
        self.una = psn
        self.dp.rewound = 0

    @property
    def retrans_at(self) -> float | None:
        return self.dp.retrans_at or None

    @retrans_at.setter
    def retrans_at(self, t: float | None):
        self.dp.retrans_at = t or 0.0

    def _rnr_wait(self, until: float | None):
        self.rnr_until = until
        self.dp.rnr_wait = until is not None

    @property
    def deadline(self) -> float | None:
        if self.rnr_until is not None:
            return self.rnr_until
        return lib.rnic_dp_deadline(self.dp) or None     # the probe or the ACK timeout

    # ---- timers ----------------------------------------------------------------------------

    def on_timer(self, now: float):
        qp = self.qp
        if qp.state not in (QPState.IBV_QPS_RTS, QPState.IBV_QPS_SQD):
            self.retrans_at = None
            self._rnr_wait(None)
            return
        req = qp.requester
        if self.rnr_until is not None and now >= self.rnr_until:
            self._rnr_wait(None)
            req.pump(now)
            return
        qp.device.dp.now = now
        rc = lib.rnic_dp_timer(qp.device.dp, self.dp)      # the data plane's timer
        if rc == lib.RNIC_DP_TIMER_EXCEEDED:                # IBTA 9.7.6.1.3
            qp.counters.inc("retry_exceeded_err")
            self._fail_head(WCStatus.IBV_WC_RETRY_EXC_ERR, now, "transport retry exceeded")
        elif rc == lib.RNIC_DP_TIMER_RETRY:
            req.pump(now)

    # ---- responses -------------------------------------------------------------------------
    def on_response(self, pkt: roce.Packet, info: op.OpInfo, now: float):
        qp = self.qp
        req = qp.requester
        rc = lib.rnic_dp_resp_psn_check(self.dp, pkt.psn)  # requests in flight only
        if rc:
            if rc == lib.RNIC_DP_RESP_BAD:
                qp.counters.inc("bad_response_psn")
            return
        progress = self.una
        qp.device.dp.now = now
        if info.kind == op.Kind.ACK:
            self._on_aeth(pkt, now)
        elif info.kind == op.Kind.READ_RESP:
            self._on_read_response(pkt, info, now)
        elif info.kind == op.Kind.ATOMIC_ACK:
            self._on_atomic_ack(pkt, now)
        lib.rnic_dp_progress(qp.device.dp, self.dp, progress)
        req.retire()
        req.pump(now)

    def _on_aeth(self, pkt, now):
        qp = self.qp
        kind, value = roce.classify_aeth(pkt.aeth_syndrome)
        if kind == roce.AETH_ACK:
            self._ack_through(pkt.psn, now)
            return
        if kind == roce.AETH_NAK and value == roce.NAK_PSN_SEQUENCE:
            # the responder NAKs once per round: obey each (the data plane's decision)
            lib.rnic_dp_nak_seq(qp.device.dp, self.dp, pkt.psn)
            return
        self._ack_through(psn_add(pkt.psn, -1), now)
        if self.una != pkt.psn:
            return          # an earlier READ/atomic is being re-issued: deal with it first
        if kind == roce.AETH_RNR:
            qp.counters.inc("rcvd_rnr_err")
            limit = qp.attr["rnr_retry"]
            if limit != 7:                     # 7 means retry forever (IBTA 9.7.5.2.8)
                if self.rnr_left == 0:
                    qp.counters.inc("rnr_nak_retry_err")
                    self._fail_head(WCStatus.IBV_WC_RNR_RETRY_EXC_ERR, now, "RNR retry exceeded")
                    return
                self.rnr_left -= 1
            self._rnr_wait(now + roce.RNR_TIMER_US[value] * 1e-6)
            self._go_back(pkt.psn, now, None, force=True)
        else:
            qp.counters.inc("rcvd_nak_err")
            status = NAK_STATUS.get(value, WCStatus.IBV_WC_REM_OP_ERR)
            self._fail_head(status, now, f"peer NAK {value}")

    def _ack_through(self, psn: int, now: float):
        """Every request PSN <= psn is acknowledged; if that covers a READ or atomic whose
        response is missing, go back to re-issue it (the data plane's rnic_dp_ack_through)."""
        self.qp.device.dp.now = now
        lib.rnic_dp_ack_through(self.qp.device.dp, self.dp, psn)

    def _on_read_response(self, pkt, info, now):
        """The data plane's rnic_dp_read_resp decides (placement, implicit ACK, gaps)."""
        qp = self.qp
        payload = bytes(pkt.payload)
        rc = lib.rnic_dp_read_resp(qp.device.dp, self.dp, pkt.psn, int(info.is_last), payload,
                                   len(payload))
        if rc == -errno.ENOENT:
            qp.counters.inc("bad_response")
        elif rc == -errno.EMSGSIZE:
            qp.counters.inc("bad_response_len")
            self._fail_head(WCStatus.IBV_WC_BAD_RESP_ERR, now, "READ response of wrong length")

    def _on_atomic_ack(self, pkt, now):
        """The data plane's rnic_dp_atomic_ack decides (implicit ACK, placement)."""
        if lib.rnic_dp_atomic_ack(self.qp.device.dp, self.dp, pkt.psn,
                                  pkt.atomic_orig & 0xFFFFFFFFFFFFFFFF) < 0:
            self.qp.counters.inc("bad_response")

    # ---- recovery ----------------------------------------------------------------------------
    def _go_back(self, psn: int, now: float, reason: str | None, force: bool = False):
        """Go back N to psn, the data plane's rnic_dp_go_back (response gaps arrive once per
        packet of a lost round: unless forced, once per una or a quarter timeout later)."""
        dev = self.qp.device.dp
        dev.now = now
        if lib.rnic_dp_go_back(dev, self.dp, psn, int(force)) and reason:
            self.qp.counters.inc(reason)

    def _fail_head(self, status: WCStatus, now: float, reason: str):
        for w in self.qp.requester.wqes:
            if w.status is None:
                w.status = status
                break
        self.retrans_at = None
        self._rnr_wait(None)
        self.qp.requester.retire()
        self.qp.fatal(reason, now)

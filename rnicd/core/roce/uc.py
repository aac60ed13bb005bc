"""UC responder: the RC responder's checks and placement, with UC's rules for what goes
wrong (IBTA 9.8, unreliable service; 9.9 error classes).

UC has no ACKs, NAKs, retransmission, READ or atomics. The data plane receives in-order UC
SENDs and WRITEs with the same C functions as RC (rnic_dp_qp.unreliable: no ACK owed);
this is the slow path, and differs from RC in four ways:
- PSN: a packet that is not the expected PSN means packets were lost: the message in
  progress is abandoned, and the responder drops everything until the next FIRST or ONLY,
  whose PSN it takes as the expected one (it resynchronises; there are no duplicates to
  recognise, since nothing is ever resent).
- A FIRST or ONLY always starts a message: one in progress lost its LAST and is abandoned.
- No receive WQE, a bad length, an rkey violation or an opcode out of sequence drop the
  message silently (counted) instead of an RNR or fatal NAK; the QP stays as it is. Only a
  local error (a malformed receive WQE) still moves the QP to the error state.
- An abandoned SEND does not complete its receive WQE: the WQE is kept (`recv_held`) and
  the next SEND (or WRITE with immediate) uses it from the start, so the receive queue
  still completes in order.
"""
from __future__ import annotations

import logging

from rnicd import native
from rnicd.core.roce.responder import (
    ACCEPTING,
    HANDLERS,
    MSG_DROP,
    MSG_NONE,
    MSG_SEND,
    MSG_WRITE,
    Responder,
)
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import QPState
from rnicd.wire.roce import psn_add

log = logging.getLogger("rnicd.uc")


class UCResponder(Responder):
    def on_request(self, pkt: roce.Packet, info: op.OpInfo, now: float):
        qp, dp = self.qp, self.dp
        if qp.state not in ACCEPTING:
            qp.counters.inc("rcvd_in_bad_state")
            return
        gap = pkt.psn != self.epsn
        if gap:
            qp.counters.inc("out_of_seq_request")
        if info.is_first:
            if dp.msg in (MSG_SEND, MSG_WRITE):    # its LAST never came (or came out of order)
                self._abandon()
            dp.msg = MSG_NONE
            self.epsn = pkt.psn                    # resynchronise (no-op when in sequence)
        elif gap:
            self._abandon()                        # dropped until the next FIRST/ONLY;
            qp.counters.inc("uc_dropped_pkts")     # the expected PSN stays as it was
            return
        elif native.lib.rnic_dp_seq_check(dp, pkt.opcode) < 0:
            # the rest of an abandoned message, or a MIDDLE/LAST that is not its message's
            # (the data plane's opcode-sequence check, 9.7.5.1)
            if dp.msg != MSG_DROP:
                qp.counters.inc("uc_bad_opcode_seq")
            return self._drop(pkt)
        if native.lib.rnic_dp_op_check(dp, pkt.opcode) < 0:
            # a WRITE to a QP without REMOTE_WRITE: its message is dropped (as rxe)
            qp.counters.inc("rcvd_op_not_enabled")
            return self._drop(pkt)
        if qp.state == QPState.IBV_QPS_RTR:
            qp.counters.inc("comm_est")
        HANDLERS[info.kind](self, pkt, info, now)     # resources, length, key, placement

    # ---- what RC answers with a NAK, UC drops -----------------------------------------------
    def _abandon(self):
        """Give up the message in progress: a SEND's receive WQE is kept for the next SEND
        (it does not complete); a WRITE's bytes placed so far stay where they are."""
        dp = self.dp
        if dp.msg in (MSG_SEND, MSG_WRITE):
            self.qp.counters.inc("uc_dropped_msgs")
        if dp.msg == MSG_SEND:
            dp.recv_held = 1            # recv_wr_id and recv_pieces stay resolved
        self.abandon_write()
        dp.msg = MSG_DROP

    def _drop(self, pkt: roce.Packet):
        """Drop this in-sequence packet and the rest of its message."""
        self._abandon()
        self.qp.counters.inc("uc_dropped_pkts")
        self.epsn = psn_add(pkt.psn, 1)
        if op.OPCODES[pkt.opcode].is_last:
            self.dp.msg = MSG_NONE

    def _rnr(self, pkt):
        self.qp.counters.inc("uc_no_recv_wqe")       # no RNR NAK on UC: dropped
        self._drop(pkt)

    def _invalid(self, pkt, now, why):
        log.debug("qp %d: UC message dropped: %s", self.qp.qp_num, why)
        self.qp.counters.inc("uc_bad_request")
        self._drop(pkt)

    def _access_error(self, pkt, now):
        self.qp.counters.inc("rcvd_access_err")
        self._drop(pkt)

    def _fatal_nak(self, pkt, code, now, why, psn=None):
        if code == roce.NAK_REMOTE_OPERATIONAL:       # a local error (a bad receive WQE):
            self.qp.counters.inc("uc_local_err")      # the QP fails, no NAK to send
            self.qp.fatal(f"responder: {why}", now)
            return
        self._invalid(pkt, now, why)

    def _advance(self, pkt):
        self.epsn = psn_add(self.epsn, 1)             # no ACK, whatever AckReq says

    def _nak(self, syndrome, psn):
        self.qp.counters.inc("internal_uc_nak")       # cannot happen: UC sends no AETH

"""RC responder: serves the peer's requests (IBTA 9.7.3-9.7.5 responder side).

Every request meets the responder's checks in IBTA's order, in on_request and the handlers it
calls, and the first that fails decides (IBTA 9.9.3, responder errors): PSN (new, duplicate or
out of sequence), opcode sequence within a message, then resources (receive WQE: else RNR
NAK), length (payload against the path MTU and the RETH: else NAK invalid request), then
remote access (rkey, PD, access flags, bounds: else NAK remote access error), then
placement. A NAK other than RNR/sequence puts this QP in the error state after it is sent.

READ responses are produced as the transmit side drains (produce()), never all at once;
responses to later requests (ACKs, NAKs, atomic ACKs, further READs) wait behind them, so
that the peer sees responses in PSN order (IBTA 9.7.5.1.2: an ACK covers every earlier PSN).
"""
from __future__ import annotations

import errno
from collections import deque

from rnicd import native
from rnicd.core import mw
from rnicd.core.roce.dpstate import dp_field
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import Access, QPState, WCOpcode, WCStatus
from rnicd.wire.roce import psn_add

K = op.Kind
ffi, lib, NULL = native.ffi, native.lib, native.ffi.NULL
MSG_NONE, MSG_SEND, MSG_WRITE, MSG_DROP = (
    native.lib.RNIC_DP_MSG_NONE, native.lib.RNIC_DP_MSG_SEND, native.lib.RNIC_DP_MSG_WRITE,
    native.lib.RNIC_DP_MSG_DROP)
ACCEPTING = (QPState.IBV_QPS_RTR, QPState.IBV_QPS_RTS, QPState.IBV_QPS_SQD)
MAX_MSG = lib.RNIC_DP_MAX_MSG
MSG_KIND = {MSG_SEND: K.SEND, MSG_WRITE: K.WRITE}


class Responder:
    epsn = dp_field("epsn", "expected PSN")
    msn = dp_field("msn", "message sequence number for the AETH")
    ack_pending = dp_field("ack_pending", "an ACK for epsn - 1 is owed")
    nak_sent = dp_field("nak_sent", "a sequence NAK was sent for the current gap")

    def __init__(self, qp):
        self.qp = qp
        self.dp = qp.dp
        self.deadline = None
        self._ptr = ffi.new("uint8_t **")      # rnic_dp_mr_check's result
        self.reset_psn(0)

    def reset_psn(self, psn: int):
        self.stop_reads()
        self.epsn = psn
        self.msn = 0
        self.abandon_write()
        self.dp.msg = MSG_NONE
        self.dp.recv_held = 0
        self.nak_sent = False
        self.dp.nak_high = psn
        self.ack_pending = False
        self.dp.atomic_next = 0             # the data plane's kept atomic results: none
        for r in self.dp.atomics:
            r.valid = 0

    # ---- READ responses, produced as the transmit buffer drains ---------------------------
    @property
    def busy(self) -> bool:
        """A READ is being answered: other responses wait behind it."""
        return bool(self.dp.rd_npkts or self._after)

    def stop_reads(self):
        """Drop the READ being answered and what waits behind it (error, reset, or a
        requester that went back N: it asks again for what it still wants)."""
        self.dp.rd_npkts = self.dp.rd_next = self.dp.resp_queued = 0
        self.dp.rd_src = NULL
        self._after: deque = deque()    # callables that queue the responses behind the READ

    def produce(self) -> bool:
        """Queue READ responses while the transmit buffer has room, then what waited behind
        them; True while some remain (call again once the buffer has drained)."""
        dev = self.qp.device.dp
        while True:
            if self.dp.rd_npkts and lib.rnic_dp_read_continue(dev, self.dp):
                return True
            if not self._after:
                break
            self._after.popleft()()
            self.dp.resp_queued = int(bool(self._after))  # the data plane waits for them
        self.flush_ack()
        return False

    def _respond(self, fn, *args):
        """Queue a response now, or behind the READ being answered."""
        if self.busy:
            self._after.append(lambda: fn(*args))
            self.dp.resp_queued = 1
        else:
            fn(*args)

    def reset(self):
        self.reset_psn(0)

    def abandon_write(self):
        dp = self.dp
        if dp.msg == MSG_WRITE:
            dp.msg = MSG_NONE
        dp.write_ptr = NULL
        dp.write_left = dp.write_len = 0

    # ---- entry point -------------------------------------------------------------------------
    def on_request(self, pkt: roce.Packet, info: op.OpInfo, now: float):
        qp = self.qp
        if qp.state not in ACCEPTING:
            qp.counters.inc("rcvd_in_bad_state")
            return
        verdict = lib.rnic_dp_psn_check(self.dp, pkt.psn)  # 1. PSN: the data plane's check
        if verdict == lib.RNIC_DP_PSN_NAK:
            self._nak(roce.aeth_nak(roce.NAK_PSN_SEQUENCE), self.epsn)
            return
        if verdict == lib.RNIC_DP_PSN_DROP:
            return
        if verdict == lib.RNIC_DP_PSN_DUP:
            if pkt.bad_len is None:     # a malformed copy of nothing we executed: dropped
                self._duplicate(pkt, info, now)
            return
        if qp.state == QPState.IBV_QPS_RTR:
            qp.counters.inc("comm_est")
        if lib.rnic_dp_seq_check(self.dp, pkt.opcode) < 0:      # 2. opcode sequence
            msg = MSG_KIND.get(self.dp.msg)
            return self._invalid(pkt, now, f"{info.name} without a FIRST" if msg is None
                                 else f"{info.name} inside a {msg.value} message")
        if lib.rnic_dp_op_check(self.dp, pkt.opcode) < 0:       # 3. opcode validity
            qp.counters.inc("rcvd_op_not_enabled")
            return self._invalid(pkt, now, f"{info.name}: the QP's access flags do not "
                                 "allow it")
        if not self._target(pkt, info, now):             # XRC: the XRCETH's SRQ (A14)
            return
        HANDLERS[info.kind](self, pkt, info, now)       # 4.. resources, length, key

    def _target(self, pkt, info, now) -> bool:
        """Where the request is served: an RC QP serves it itself (XRC overrides this)."""
        return True

    # ---- per-kind handlers -----------------------------------------------------------------
    def _send(self, pkt, info, now):
        """The slow path of a SEND: the data plane receives in-order SENDs into its own RQ's
        WQEs itself; this handles the rest (SRQ, RNR, errors) with the same C functions."""
        qp, dp = self.qp, self.dp
        if info.is_first:
            wqe = self._take_recv()                       # resources
            if wqe is None:
                return self._rnr(pkt)
            if not self._length_ok(pkt, info):
                qp.complete_recv(wqe.wr_id, WCStatus.IBV_WC_REM_INV_REQ_ERR,
                                 WCOpcode.IBV_WC_RECV)
                return self._invalid(pkt, now, "bad payload length for the path MTU")
            if isinstance(wqe, HeldWQE):    # its buffers are resolved: start them over
                dp.recv_off = 0
                rc = 0
            else:
                # the C check decides (the SGE count against the cap first, so the SGEs
                # beyond what take() copied are never read; then each lkey)
                sg = ffi.new("struct rnic_sge[]", [(a, n, k) for a, n, k in wqe.sges] or 1)
                rc = lib.rnic_dp_recv_begin(qp.device.dp, dp, wqe.wr_id, sg, wqe.num_sge)
            if rc < 0:
                bad_count = rc == -errno.EINVAL
                qp.complete_recv(wqe.wr_id, WCStatus.IBV_WC_LOC_LEN_ERR if bad_count
                                 else WCStatus.IBV_WC_LOC_PROT_ERR, WCOpcode.IBV_WC_RECV)
                return self._fatal_nak(pkt, roce.NAK_REMOTE_OPERATIONAL, now,
                                       "receive WQE with more SGEs than the QP's cap"
                                       if bad_count else "receive WQE with a bad lkey")
            dp.msg = MSG_SEND
        elif not self._length_ok(pkt, info):
            return self._invalid(pkt, now, "bad payload length for the path MTU")
        target = None
        if info.ieth:            # SEND with Invalidate (9.3.9, 10.6.7.2.3): its R_Key first
            target, why = mw.check_invalidate(qp, pkt.ieth_rkey, remote=True)
            if target is None:
                qp.counters.inc("rcvd_inv_err")
                return self._invalid(pkt, now, f"SEND with Invalidate: {why}")
        payload = bytes(pkt.payload)
        if lib.rnic_dp_recv_place(dp, payload, len(payload)) < 0:
            qp.complete_recv(dp.recv_wr_id, WCStatus.IBV_WC_LOC_LEN_ERR, WCOpcode.IBV_WC_RECV)
            self._end_message()
            return self._fatal_nak(pkt, roce.NAK_INVALID_REQUEST, now,
                                   "SEND larger than the receive buffer")
        if info.is_last:
            wr_id, length = dp.recv_wr_id, dp.recv_off
            self._end_message()
            if target is not None:
                mw.invalidate(target)       # before the completion that reports it
            qp.complete_recv(wr_id, WCStatus.IBV_WC_SUCCESS, WCOpcode.IBV_WC_RECV, length,
                             pkt.imm if info.immdt else None, solicited=pkt.se,
                             inv=pkt.ieth_rkey if target is not None else None)
            self._message_done()
        self._advance(pkt)

    def _write(self, pkt, info, now):
        """The slow path of an RDMA WRITE: the data plane places in-order WRITEs itself and
        hands over what it cannot decide; the length and key checks, the placement and the
        message's state (qp.dp) are its rnic_dp_write, called here for the same decision."""
        qp, dp = self.qp, self.dp
        wqe = None
        if info.is_last and info.immdt:
            wqe = self._take_recv()       # resources: WRITE with immediate takes a WQE
            if wqe is None:
                return self._rnr(pkt)     # the requester resends from this PSN
        rc = -errno.EMSGSIZE                              # length, then key
        if pkt.bad_len is None:
            payload = pkt.payload
            rc = lib.rnic_dp_write(qp.device.dp, dp, pkt.opcode, pkt.reth_va or 0,
                                   pkt.reth_rkey or 0, pkt.reth_len or 0,
                                   ffi.from_buffer("uint8_t[]", payload), len(payload))
        if rc < 0:
            bad_len = rc == -errno.EMSGSIZE
            if wqe is not None:
                qp.complete_recv(wqe.wr_id, WCStatus.IBV_WC_REM_INV_REQ_ERR if bad_len
                                 else WCStatus.IBV_WC_REM_ACCESS_ERR,
                                 WCOpcode.IBV_WC_RECV_RDMA_WITH_IMM)
            if bad_len:
                return self._invalid(pkt, now, "WRITE payload length does not match the path "
                                     "MTU or the RETH length")
            return self._access_error(pkt, now)
        if wqe is not None:               # the LAST or ONLY ended the message (and the MSN)
            qp.complete_recv(wqe.wr_id, WCStatus.IBV_WC_SUCCESS,
                             WCOpcode.IBV_WC_RECV_RDMA_WITH_IMM, dp.write_len, pkt.imm,
                             solicited=pkt.se)
        self._advance(pkt)

    def _read(self, pkt, info, now):
        if pkt.bad_len is not None or pkt.reth_len > MAX_MSG:       # length (C9-xx: 2^31)
            return self._invalid(pkt, now, "READ request of a bad length")
        src = self._read_source(pkt)                                 # key
        if src is None:
            return self._access_error(pkt, now)
        psn, length, msn = pkt.psn, pkt.reth_len, self.msn
        n = 1 if length == 0 else -(-length // self.qp.mtu)
        self.epsn = psn_add(self.epsn, n)
        self._message_done()
        self._respond(self._start_read, psn, length, src, msn, (pkt.reth_rkey, pkt.reth_va))

    def _atomic(self, pkt, info, now):
        """The data plane's rnic_dp_atomic decides (alignment, key, the operation, the kept
        result, ePSN and MSN)."""
        if pkt.bad_len is not None:
            return self._invalid(pkt, now, "atomic request of a bad length")
        res, m = ffi.new("uint64_t *"), 0xFFFFFFFFFFFFFFFF
        cas = pkt.opcode & 0x1F == op.Opcode.RC_COMPARE_SWAP     # RC's or XRC's
        rc = lib.rnic_dp_atomic(self.qp.device.dp, self.dp, pkt.psn, int(cas), pkt.atomic_va,
                                pkt.atomic_rkey, pkt.atomic_swap_add & m,
                                pkt.atomic_compare & m, res)
        if rc == -errno.EINVAL:
            return self._fatal_nak(pkt, roce.NAK_INVALID_REQUEST, now, "misaligned atomic")
        if rc < 0:
            return self._access_error(pkt, now)
        self._respond(self._atomic_ack, pkt.psn, res[0])

    # ---- duplicates (IBTA 9.7.5.1.4) ---------------------------------------------------------
    def _duplicate(self, pkt, info, now):
        if info.kind == K.READ_REQ:
            # READs are re-executed: the requester went back to this PSN, and asks again
            # for whatever it still wants after it
            src = self._read_source(pkt) if pkt.reth_len <= MAX_MSG else None
            if src is not None:
                self.stop_reads()
                self._start_read(pkt.psn, pkt.reth_len, src, self.msn)
        elif info.kind == K.ATOMIC:
            orig = ffi.new("uint64_t *")
            if lib.rnic_dp_atomic_replay(self.dp, pkt.psn, orig) < 0:
                self.qp.counters.inc("duplicate_atomic_evicted")
            else:
                self._respond(self._atomic_ack, pkt.psn, orig[0])   # replayed, not redone
        else:
            self.ack_pending = True                     # re-acknowledge SEND/WRITE

    # ---- helpers ---------------------------------------------------------------------------
    def _length_ok(self, pkt, info) -> bool:
        """IBTA 9.7.7.1, the data plane's rnic_dp_len_check: FIRST/MIDDLE carry exactly one
        MTU, LAST 1 to MTU bytes, ONLY at most one MTU."""
        return pkt.bad_len is None and \
            lib.rnic_dp_len_check(self.dp, pkt.opcode, len(pkt.payload)) == 0

    def _remote(self, rkey, va, length, need):
        """uint8_t * to [va, va+length) of rkey (an MR or a memory window) if this QP may
        access it with `need`, else None: the data plane's check, rnic_dp_mr_check."""
        p = self._ptr
        if lib.rnic_dp_mr_check(self.qp.device.dp, self.dp, self.dp.pd, rkey, va, length,
                                int(need), p) < 0:
            return None
        return p[0]

    def _read_source(self, pkt):
        """Where a READ's data comes from, or None on a remote access error."""
        if not pkt.reth_len:
            return NULL     # zero-length transfers need no valid rkey (9.7.4.1.5)
        return self._remote(pkt.reth_rkey, pkt.reth_va, pkt.reth_len,
                            Access.IBV_ACCESS_REMOTE_READ)

    def _start_read(self, psn, length, src, msn, key=None):
        """Start answering a READ with the data plane's rnic_dp_read_begin/_continue. A READ
        that waited (key given) is looked up again: its MR may be gone by now."""
        if key is not None and length:
            now_src = self._remote(key[0], key[1], length, Access.IBV_ACCESS_REMOTE_READ)
            if now_src is None or now_src != src:
                self.qp.counters.inc("rcvd_access_err")
                return self._fatal_nak(None, roce.NAK_REMOTE_ACCESS, 0.0,
                                       "READ source deregistered", psn)
        dp = self.dp
        lib.rnic_dp_read_begin(dp, psn, src, length)
        dp.rd_msn = msn
        dev = self.qp.device
        if lib.rnic_dp_read_continue(dev.dp, dp):
            dev.reading.add(self.qp)

    def _atomic_ack(self, psn, orig):
        dev = self.qp.device
        if lib.rnic_dp_send_atomic_ack(dev.dp, self.dp, psn, orig) < 0:
            dev.spill_tx()
            lib.rnic_dp_send_atomic_ack(dev.dp, self.dp, psn, orig)

    def _advance(self, pkt):
        self.epsn = psn_add(self.epsn, 1)
        if pkt.ackreq:
            self.ack_pending = True

    def _take_recv(self):
        """The next receive WQE: the one a UC SEND left (taken before any other, so
        receive WQEs still complete in order), else the RQ's or SRQ's next; None: RNR."""
        if self.dp.recv_held:
            self.dp.recv_held = 0
            return HeldWQE(self.dp.recv_wr_id)
        return self.qp.take_recv()

    def abandon_send(self, status: WCStatus):
        """Give up the SEND being received (or the WQE a UC SEND left): its receive WQE
        completes with status."""
        dp = self.dp
        if dp.msg == MSG_SEND or dp.recv_held:
            wr_id = dp.recv_wr_id
            if dp.msg == MSG_SEND:
                dp.msg = MSG_NONE
            dp.recv_npieces = dp.recv_held = 0
            self.qp.complete_recv(wr_id, status, WCOpcode.IBV_WC_RECV)

    def _end_message(self):
        self.abandon_write()
        self.dp.msg = MSG_NONE

    def _message_done(self):
        self.msn = (self.msn + 1) & 0xFFFFFF

    def flush_ack(self):
        """Send one coalesced ACK for everything received so far (9.7.5.1.2), once the READ
        responses before it are out."""
        if self.ack_pending and not self.busy:
            self.ack_pending = False
            self._nak(roce.aeth_ack(), psn_add(self.epsn, -1))

    def _nak(self, syndrome, psn):
        """An ACKNOWLEDGE with this AETH syndrome, built by the data plane."""
        self._respond(self._send_aeth, syndrome, psn)

    def _send_aeth(self, syndrome, psn):
        dev = self.qp.device
        if native.lib.rnic_dp_send_aeth(dev.dp, self.dp, syndrome, psn) < 0:
            dev.spill_tx()
            native.lib.rnic_dp_send_aeth(dev.dp, self.dp, syndrome, psn)

    def _rnr(self, pkt):
        self.qp.counters.inc("send_rnr_nak")
        self._nak(roce.aeth_rnr(self.qp.attr["min_rnr_timer"]), pkt.psn)

    def _invalid(self, pkt, now, why):
        self.abandon_send(WCStatus.IBV_WC_REM_INV_REQ_ERR)   # its WQE is not lost
        self._end_message()
        self._fatal_nak(pkt, roce.NAK_INVALID_REQUEST, now, why)

    def _access_error(self, pkt, now):
        self.qp.counters.inc("rcvd_access_err")
        self._fatal_nak(pkt, roce.NAK_REMOTE_ACCESS, now, "remote access error")

    def _fatal_nak(self, pkt, code, now, why, psn=None):
        """NAK, then the error state: what waited behind a READ is dropped, the NAK goes
        now."""
        qp = self.qp
        qp.counters.inc("nak_sent")
        self.stop_reads()
        self._send_aeth(roce.aeth_nak(code), pkt.psn if psn is None else psn)
        qp.fatal(f"responder: {why}", now)



class HeldWQE:
    """The receive WQE a UC SEND left in rnic_dp_qp (recv_wr_id, its recv_pieces)."""

    __slots__ = ("wr_id",)

    def __init__(self, wr_id: int):
        self.wr_id = wr_id


HANDLERS = {K.SEND: Responder._send, K.WRITE: Responder._write,
             K.READ_REQ: Responder._read, K.ATOMIC: Responder._atomic}

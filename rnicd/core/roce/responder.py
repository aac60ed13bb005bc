"""RC responder: serves the peer's requests (IBTA 9.7.3-9.7.5 responder side).

Checks in the order IBTA 9.7.3/9.7.4 gives them: PSN (new, duplicate, or out of sequence),
opcode sequence within a message, then resources (receive WQE: else RNR NAK), then remote
access (rkey, PD, access flags, bounds: else NAK remote access error), then placement.
A NAK other than RNR/sequence puts this QP in the error state after it is sent.
"""
from __future__ import annotations

from collections import OrderedDict

from rnicd import native
from rnicd.core.resources import MR
from rnicd.core.roce.dpstate import dp_field
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import Access, QPState, WCOpcode, WCStatus
from rnicd.wire.roce import psn_add, psn_diff

K = op.Kind
ffi, lib, NULL = native.ffi, native.lib, native.ffi.NULL
MSG_NONE, MSG_SEND, MSG_WRITE = (native.lib.RNIC_DP_MSG_NONE, native.lib.RNIC_DP_MSG_SEND,
                                 native.lib.RNIC_DP_MSG_WRITE)
RENAK_AFTER = 16      # out-of-sequence packets after which a sequence NAK is repeated
ACCEPTING = (QPState.IBV_QPS_RTR, QPState.IBV_QPS_RTS, QPState.IBV_QPS_SQD)


class Responder:
    epsn = dp_field("epsn", "expected PSN")
    msn = dp_field("msn", "message sequence number for the AETH")
    ack_pending = dp_field("ack_pending", "an ACK for epsn - 1 is owed")
    nak_sent = dp_field("nak_sent", "a sequence NAK was sent for the current gap")

    def __init__(self, qp):
        self.qp = qp
        self.dp = qp.dp
        self.deadline = None
        self.reset_psn(0)

    def reset_psn(self, psn: int):
        self.epsn = psn
        self.msn = 0
        self.abandon_write()
        self.dp.msg = MSG_NONE
        self.nak_sent = False
        self.nak_high = psn            # highest PSN seen since the NAK was sent
        self.oos_since_nak = 0
        self.ack_pending = False
        self.atomic_cache: OrderedDict[int, int] = OrderedDict()   # psn -> original value

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
        d = psn_diff(pkt.psn, self.epsn)
        if d > 0:
            # One sequence NAK per gap (9.7.5.2.3) -- and again when the PSNs go backwards,
            # which means the requester started a new retransmission round that lost ePSN too.
            # A NAK can be lost too: repeat it after RENAK_AFTER more out-of-sequence packets.
            qp.counters.inc("out_of_seq_request")
            self.oos_since_nak += 1
            if (not self.nak_sent or psn_diff(pkt.psn, self.nak_high) <= 0
                    or self.oos_since_nak >= RENAK_AFTER):
                self.nak_sent = True
                self.oos_since_nak = 0
                self._nak(roce.aeth_nak(roce.NAK_PSN_SEQUENCE), self.epsn)
            self.nak_high = pkt.psn
            return
        if d < 0:
            qp.counters.inc("duplicate_request")
            self._duplicate(pkt, info, now)
            return
        self.nak_sent = False
        if qp.state == QPState.IBV_QPS_RTR:
            qp.counters.inc("comm_est")
        handler = _HANDLERS[info.kind]
        handler(self, pkt, info, now)

    # ---- per-kind handlers -----------------------------------------------------------------
    def _send(self, pkt, info, now):
        """The slow path of a SEND: the data plane receives in-order SENDs into its own RQ's
        WQEs itself; this handles the rest (SRQ, RNR, errors) with the same C functions."""
        qp, dp = self.qp, self.dp
        if info.is_first:
            if dp.msg != MSG_NONE:
                return self._invalid(pkt, now, "SEND FIRST inside a message")
            wqe = qp.take_recv()
            if wqe is None:
                return self._rnr(pkt)
            sg = ffi.new("struct rnic_sge[]", [(a, n, k) for a, n, k in wqe.sges] or 1)
            if lib.rnic_dp_recv_begin(qp.device.dp, dp, wqe.wr_id, sg, len(wqe.sges)) < 0:
                qp.complete_recv(wqe.wr_id, WCStatus.IBV_WC_LOC_PROT_ERR, WCOpcode.IBV_WC_RECV)
                return self._fatal_nak(pkt, roce.NAK_REMOTE_OPERATIONAL, now,
                                       "receive WQE with a bad lkey")
            dp.msg = MSG_SEND
        elif dp.msg != MSG_SEND:
            return self._invalid(pkt, now, "SEND MIDDLE/LAST without FIRST")
        if not self._length_ok(pkt, info):
            return self._invalid(pkt, now, "bad payload length for the path MTU")
        payload = bytes(pkt.payload)
        if lib.rnic_dp_recv_place(dp, payload, len(payload)) < 0:
            qp.complete_recv(dp.recv_wr_id, WCStatus.IBV_WC_LOC_LEN_ERR, WCOpcode.IBV_WC_RECV)
            self._end_message()
            return self._fatal_nak(pkt, roce.NAK_INVALID_REQUEST, now,
                                   "SEND larger than the receive buffer")
        if info.is_last:
            wr_id, length = dp.recv_wr_id, dp.recv_off
            self._end_message()
            qp.complete_recv(wr_id, WCStatus.IBV_WC_SUCCESS, WCOpcode.IBV_WC_RECV, length,
                             pkt.imm if info.immdt else None, solicited=pkt.se)
            self._message_done()
        self._advance(pkt)

    def _write(self, pkt, info, now):
        """The slow path of an RDMA WRITE: the data plane places in-order WRITEs itself and
        hands over what it cannot decide; the message's state is the shared qp.dp."""
        qp, dp = self.qp, self.dp
        if info.is_first:
            if dp.msg != MSG_NONE:
                return self._invalid(pkt, now, "WRITE FIRST inside a message")
            mr = self._remote_mr(pkt.reth_rkey, pkt.reth_va, pkt.reth_len,
                                 Access.IBV_ACCESS_REMOTE_WRITE)
            if mr is None and pkt.reth_len:
                return self._access_error(pkt, now)
            dp.msg = MSG_WRITE
            dp.write_ptr = mr.pointer(pkt.reth_va) if mr is not None else NULL
            dp.write_left = dp.write_len = pkt.reth_len
        elif dp.msg != MSG_WRITE:
            return self._invalid(pkt, now, "WRITE MIDDLE/LAST without FIRST")
        if not self._length_ok(pkt, info):
            return self._invalid(pkt, now, "bad payload length for the path MTU")
        n = len(pkt.payload)
        if n > dp.write_left or (info.is_last and n != dp.write_left):
            return self._invalid(pkt, now, "WRITE payload does not match the RETH length")
        wqe = None
        if info.is_last and info.immdt:
            wqe = qp.take_recv()          # WRITE with immediate consumes a receive WQE
            if wqe is None:
                if info.is_first:
                    self.abandon_write()
                return self._rnr(pkt)
        if n:
            ffi.memmove(dp.write_ptr, pkt.payload, n)
            dp.write_ptr += n
            dp.write_left -= n
        if info.is_last:
            length = dp.write_len
            self._end_message()
            if wqe is not None:
                qp.complete_recv(wqe.wr_id, WCStatus.IBV_WC_SUCCESS,
                                 WCOpcode.IBV_WC_RECV_RDMA_WITH_IMM, length, pkt.imm,
                                 solicited=pkt.se)
            self._message_done()
        self._advance(pkt)

    def _read(self, pkt, info, now):
        if self.dp.msg != MSG_NONE:
            return self._invalid(pkt, now, "READ inside a message")
        n = self._read_respond(pkt)
        if n is None:
            return self._access_error(pkt, now)
        self.epsn = psn_add(self.epsn, n)
        self._message_done()

    def _atomic(self, pkt, info, now):
        qp = self.qp
        if self.dp.msg != MSG_NONE:
            return self._invalid(pkt, now, "atomic inside a message")
        if pkt.atomic_va % 8:
            return self._fatal_nak(pkt, roce.NAK_INVALID_REQUEST, now, "misaligned atomic")
        mr = self._remote_mr(pkt.atomic_rkey, pkt.atomic_va, 8, Access.IBV_ACCESS_REMOTE_ATOMIC)
        if mr is None:
            return self._access_error(pkt, now)
        off = pkt.atomic_va - mr.iova
        nat = qp.device.native
        if pkt.opcode == op.Opcode.RC_COMPARE_SWAP:
            orig = nat.atomic_cas64(mr.buf, off, pkt.atomic_compare, pkt.atomic_swap_add)
        else:
            orig = nat.atomic_faa64(mr.buf, off, pkt.atomic_swap_add)
        self.atomic_cache[pkt.psn] = orig
        while len(self.atomic_cache) > max(1, qp.attr["max_dest_rd_atomic"]):
            self.atomic_cache.popitem(last=False)
        self._atomic_ack(pkt.psn, orig)
        self.epsn = psn_add(self.epsn, 1)
        self._message_done()

    # ---- duplicates (IBTA 9.7.5.1.4) ---------------------------------------------------------
    def _duplicate(self, pkt, info, now):
        if info.kind == K.READ_REQ:
            self._read_respond(pkt)                     # READs are re-executed
        elif info.kind == K.ATOMIC:
            orig = self.atomic_cache.get(pkt.psn)
            if orig is None:
                self.qp.counters.inc("duplicate_atomic_evicted")
            else:
                self._atomic_ack(pkt.psn, orig)         # atomics are replayed, not redone
        else:
            self.ack_pending = True                     # re-acknowledge SEND/WRITE

    # ---- helpers ---------------------------------------------------------------------------
    def _length_ok(self, pkt, info) -> bool:
        """IBTA 9.7.7.1: FIRST/MIDDLE carry exactly one MTU, LAST/ONLY at most one."""
        n = len(pkt.payload)
        mtu = self.qp.mtu
        return n <= mtu and (info.is_last or n == mtu)

    def _remote_mr(self, rkey, va, length, need) -> MR | None:
        qp = self.qp
        mr = qp.device.keys.by_rkey(rkey)
        if (mr is None or mr.pd is not qp.pd or not (mr.access & need)
                or not (qp.attr["qp_access_flags"] & need)
                or mr.offset_of(va, length) is None):
            return None
        return mr

    def _read_respond(self, pkt) -> int | None:
        """Answer a READ request with the data plane's rnic_dp_read_respond; the number of
        response packets, or None on a remote access error."""
        length = pkt.reth_len
        if length:
            mr = self._remote_mr(pkt.reth_rkey, pkt.reth_va, length,
                                 Access.IBV_ACCESS_REMOTE_READ)
            if mr is None:
                return None
            src = mr.pointer(pkt.reth_va)
        else:
            src = NULL      # zero-length transfers need no valid rkey (9.7.4.1.5)
        dev = self.qp.device
        n = lib.rnic_dp_read_respond(dev.dp, self.dp, pkt.psn, src, length)
        if n < 0:
            dev.spill_tx()
            n = lib.rnic_dp_read_respond(dev.dp, self.dp, pkt.psn, src, length)
        return n

    def _atomic_ack(self, psn, orig):
        p = roce.Packet(opcode=op.Opcode.RC_ATOMIC_ACKNOWLEDGE,
                        dest_qp=self.qp.attr["dest_qp_num"], psn=psn,
                        aeth_syndrome=roce.aeth_ack(), aeth_msn=self.msn, atomic_orig=orig)
        self.qp.emit(p)

    def _advance(self, pkt):
        self.epsn = psn_add(self.epsn, 1)
        if pkt.ackreq:
            self.ack_pending = True

    def abandon_send(self, status: WCStatus):
        """Give up the SEND being received: its receive WQE completes with status."""
        dp = self.dp
        if dp.msg == MSG_SEND:
            wr_id = dp.recv_wr_id
            dp.msg, dp.recv_npieces = MSG_NONE, 0
            self.qp.complete_recv(wr_id, status, WCOpcode.IBV_WC_RECV)

    def _end_message(self):
        self.abandon_write()
        self.dp.msg = MSG_NONE

    def _message_done(self):
        self.msn = (self.msn + 1) & 0xFFFFFF

    def flush_ack(self):
        """Send one coalesced ACK for everything received so far (9.7.5.1.2)."""
        if self.ack_pending:
            self.ack_pending = False
            self._nak(roce.aeth_ack(), psn_add(self.epsn, -1))

    def _nak(self, syndrome, psn):
        """An ACKNOWLEDGE with this AETH syndrome, built by the data plane."""
        dev = self.qp.device
        if native.lib.rnic_dp_send_aeth(dev.dp, self.dp, syndrome, psn) < 0:
            dev.spill_tx()
            native.lib.rnic_dp_send_aeth(dev.dp, self.dp, syndrome, psn)

    def _rnr(self, pkt):
        self.qp.counters.inc("send_rnr_nak")
        self._nak(roce.aeth_rnr(self.qp.attr["min_rnr_timer"]), pkt.psn)

    def _invalid(self, pkt, now, why):
        self._end_message()
        self._fatal_nak(pkt, roce.NAK_INVALID_REQUEST, now, why)

    def _access_error(self, pkt, now):
        self.qp.counters.inc("rcvd_access_err")
        self._fatal_nak(pkt, roce.NAK_REMOTE_ACCESS, now, "remote access error")

    def _fatal_nak(self, pkt, code, now, why):
        qp = self.qp
        qp.counters.inc("nak_sent")
        self._nak(roce.aeth_nak(code), pkt.psn)
        qp.fatal(f"responder: {why}", now)



_HANDLERS = {K.SEND: Responder._send, K.WRITE: Responder._write,
             K.READ_REQ: Responder._read, K.ATOMIC: Responder._atomic}

"""RC requester: turns send WQEs into request packets (IBTA 9.7.1-9.7.2, segmentation 9.7.7).

The data plane's rnic_dp_pump fetches WQEs from the SQ ring (rnic_dp_fetch: each copied out
once, validated into its descriptor, struct rnic_dp_swqe, one per SQ slot, and given its PSN
range, with the rd_atomic limit and fences), segments SEND and WRITE WQEs into packets and
sends READ and atomic requests (a READ as requests of at most RNIC_DP_READ_CHUNK response
packets). core/ fetches what it leaves: BIND_MW and LOCAL_INV (run at fetch), bad WQEs (the
QP fails), a corrupt ring. `send_psn` walks the PSN ranges and is rewound to the oldest
unacknowledged PSN for go-back-N (9.7.5.1).
"""
from __future__ import annotations

from rnicd import native
from rnicd.core import mw
from rnicd.core.roce.dpstate import dp_field
from rnicd.wire.abi import WC_OPCODE_OF_WR as WC_OPCODE
from rnicd.wire.abi import QPState, WCStatus, WROpcode

ffi, lib = native.ffi, native.lib
WINDOW = lib.RNIC_DP_WINDOW

W = WROpcode
LOCAL_OPS = {W.IBV_WR_BIND_MW, W.IBV_WR_LOCAL_INV}     # no packets: run at fetch (core/mw.py)
IN_FLIGHT = -1        # rnic_dp_swqe.status while the WQE is not finished


class InFlight:
    """core/'s handle on an in-flight send WQE: its descriptor `d` (the data plane's copy,
    validated by rnic_dp_swqe_load), plus the atomic operands, which only core/ uses."""

    __slots__ = ("d", "idx")

    def __init__(self, d, idx: int):
        self.d = d                  # struct rnic_dp_swqe * (its slot in the QP's array)
        self.idx = idx              # the SQ index it was made for (slots are reused)

    wr_id = property(lambda self: self.d.wr_id)
    opcode = property(lambda self: self.d.opcode)
    flags = property(lambda self: self.d.flags)
    imm = property(lambda self: self.d.imm)
    remote_addr = property(lambda self: self.d.remote_addr)
    rkey = property(lambda self: self.d.rkey)
    length = property(lambda self: self.d.length)
    first_psn = property(lambda self: self.d.first_psn)
    npkts = property(lambda self: self.d.npkts)

    @property
    def status(self) -> WCStatus | None:
        return None if self.d.status == IN_FLIGHT else WCStatus(self.d.status)

    @status.setter
    def status(self, value: WCStatus | None):
        self.d.status = IN_FLIGHT if value is None else int(value)


class Requester:
    next_psn = dp_field("next_psn", "next PSN to assign")
    send_psn = dp_field("send_psn", "next PSN to transmit")
    high_psn = dp_field("high_psn", "PSN after the highest ever sent: below it is a resend")
    cwnd = dp_field("cwnd", "AIMD congestion window, packets", float)

    def __init__(self, qp):
        self.qp = qp
        dp = self.dp = qp.dp
        ring = qp.sq_ring
        n = ring.num_entries
        self._mask = n - 1
        self._sge = max(1, qp.cap.max_send_sge)
        self._swqes = native.shared_new("struct rnic_dp_swqe[]", n)
        self._pieces = native.shared_new("struct rnic_dp_piece[]", n * self._sge)
        self._slots: list[InFlight | None] = [None] * n
        self._pruned = 0
        self._hdr = ffi.new("struct rnic_send_wqe *")     # the header rnic_dp_swqe_load copied
        dp.swqes, dp.swqe_mask, dp.sq = self._swqes, self._mask, ring.hdr
        dp.scq = qp.send_cq.dp if qp.send_cq is not None else ffi.NULL   # XRC TGT: none
        dp.sq_sig_all = int(bool(qp.sq_sig_all))
        dp.sq_entries = ffi.cast("uint8_t *", ring.hdr) + ring.hdr_size
        dp.sq_entry_size, dp.sq_pieces = ring.entry_size, self._pieces
        dp.max_send_sge, dp.sq_piece_stride = qp.cap.max_send_sge, self._sge
        dp.max_inline = qp.cap.max_inline_data
        self.cwnd = WINDOW
        self.reset_psn(0)

    def reset_psn(self, psn: int):
        self.next_psn = self.send_psn = self.high_psn = psn

    def reset(self):
        ring = self.qp.sq_ring
        self.dp.sq_head = self.dp.sq_next = self._pruned = ring.hdr.prod
        ring.store_cons(self.dp.sq_next)
        self._slots = [None] * len(self._slots)

    # ---- the in-flight list ----------------------------------------------------------------
    @property
    def wqes(self) -> list[InFlight]:
        """Fetched WQEs not yet retired, oldest first (views made on demand for the ones the
        data plane fetched itself)."""
        head, count = self.dp.sq_head, (self.dp.sq_next - self.dp.sq_head) & 0xFFFFFFFF
        out = []
        for i in range(count):
            idx = (head + i) & 0xFFFFFFFF
            w = self._slots[idx & self._mask]
            if w is None or w.idx != idx:
                w = self._slots[idx & self._mask] = InFlight(self._swqes + (idx & self._mask),
                                                             idx)
            out.append(w)
        return out

    def _prune(self):
        """Forget retired WQEs (the data plane retires without telling): their scatter lists
        hold views of client memory, which must not outlive them."""
        head = self.dp.sq_head
        while self._pruned != head:
            self._slots[self._pruned & self._mask] = None
            self._pruned = (self._pruned + 1) & 0xFFFFFFFF

    def uses_region(self, mr) -> bool:
        lo, hi = mr.pointer(mr.iova), mr.pointer(mr.iova + mr.length)
        for w in self.wqes:
            d = w.d
            if any(lo <= d.pieces[i].ptr < hi for i in range(d.npieces)):
                return True
        return False

    # ---- fetching ------------------------------------------------------------------------
    def fetch(self) -> bool:
        """Fetch the WQE rnic_dp_fetch left to core/ (its limits and fences passed) with
        the data plane's functions. False if none can be fetched now or the QP failed."""
        qp, dp = self.qp, self.dp
        pending = lib.rnic_dp_sq_pending(dp)
        if pending < 0:
            qp.device.counters.inc("sq_ring_corrupt")
            qp.fatal("send queue producer index out of range", 0.0)
            return False
        if pending == 0:
            return False
        slot = dp.sq_next & self._mask
        lib.rnic_dp_swqe_load(qp.device.dp, dp, self._hdr)
        w = InFlight(self._swqes + slot, dp.sq_next)
        if lib.rnic_dp_swqe_commit(dp) < 0:
            return False       # its PSNs would be 2^23 past una: wait for ACKs
        self._slots[slot] = w
        if w.status is None and w.opcode in LOCAL_OPS:
            # IBTA 10.6.7.2: bind and invalidate take effect now, before any later WR is
            # sent, and complete in SQ order (retire waits for the WRs before them)
            w.status = mw.execute(qp, w.opcode, self._hdr)
            if w.status == WCStatus.IBV_WC_SUCCESS:
                self.retire()
                return True
        if w.status is not None:
            qp.fatal(f"bad send WQE wr_id={w.wr_id}: {w.status.name}", 0.0)
            return False
        return True

    # ---- transmitting --------------------------------------------------------------------
    def pump(self, now: float):
        """Send what the window allows: the data plane's rnic_dp_pump, and core/'s fetch
        for the WQEs it leaves."""
        qp, dp = self.qp, self.dp
        if qp.state == QPState.IBV_QPS_ERR:
            self.flush()
            return
        if qp.state != QPState.IBV_QPS_RTS or qp.completer.rnr_until is not None:
            return
        dev = qp.device
        dev.dp.now = now
        while True:
            rc = lib.rnic_dp_pump(dev.dp, dp)
            if rc == lib.RNIC_DP_PUMP_FETCH:       # the next WQE is core/'s (or none)
                if not self.fetch():
                    break
                if qp.state != QPState.IBV_QPS_RTS:
                    return
            elif rc == lib.RNIC_DP_PUMP_SLOW:   # cannot happen: no WQE at send_psn
                dev.counters.inc("internal_psn_error")
                self.send_psn = self.next_psn
            elif rc == lib.RNIC_DP_PUMP_TX_FULL:
                dev.spill_tx()
            else:
                break
        self._prune()

    # ---- retiring --------------------------------------------------------------------------
    def retire(self):
        """Complete finished WQEs from the head, in order (IBTA 10.8.3), free their slots."""
        lib.rnic_dp_retire(self.qp.device.dp, self.dp)
        self._prune()

    def flush(self):
        """Error state: finish everything outstanding or still in the ring with FLUSH_ERR."""
        qp, dp = self.qp, self.dp
        ring = qp.sq_ring
        for w in self.wqes:
            if w.status is None:
                w.status = WCStatus.IBV_WC_WR_FLUSH_ERR
        self.retire()
        # a corrupt producer index: nothing trustworthy to flush
        pending = max(0, lib.rnic_dp_sq_pending(dp))
        for _ in range(pending):
            raw = ring.send_wqe(dp.sq_next)
            qp.complete_send(int(raw.wr_id), WCStatus.IBV_WC_WR_FLUSH_ERR,
                             WC_OPCODE.get(int(raw.opcode), 0))
            dp.sq_next = dp.sq_head = self._pruned = (dp.sq_next + 1) & 0xFFFFFFFF
            ring.store_cons(dp.sq_next)
        ring.hdr.error = 1
        self.send_psn = self.next_psn

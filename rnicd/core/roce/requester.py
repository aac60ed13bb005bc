"""RC requester: turns send WQEs into request packets (IBTA 9.7.1-9.7.2, segmentation 9.7.7).

core/ fetches every WQE from the SQ ring, validates it, and fills its descriptor
(struct rnic_dp_swqe, one per SQ slot) with the PSN range it gets; the data plane's
rnic_dp_pump segments SEND and WRITE WQEs into packets, and the READ and atomic requests are
built here. `send_psn` walks the PSN ranges and is rewound to the oldest unacknowledged PSN
for go-back-N (9.7.5.1). READs are issued as requests of at most READ_CHUNK response
packets, so that the responder never bursts more than the window; a re-issued READ asks for
the rest of its original request only (9.7.4.1.4).
"""
from __future__ import annotations

from rnicd import native
from rnicd.core import mw
from rnicd.core.roce.dpstate import dp_field
from rnicd.wire import opcodes as op
from rnicd.wire.abi import WC_OPCODE_OF_WR as WC_OPCODE
from rnicd.wire.abi import QPState, SendFlags, WCStatus, WROpcode
from rnicd.wire.roce import Packet, psn_add, psn_diff

ffi, lib = native.ffi, native.lib
WINDOW = lib.RNIC_DP_WINDOW
READ_CHUNK = 64       # response packets per READ request
XRC_OPBASE = op.Transport.XRC << 5    # Annex A14.4.1: XRC opcodes are 0xA0 | RC's

W = WROpcode
ATOMICS = {W.IBV_WR_ATOMIC_CMP_AND_SWP, W.IBV_WR_ATOMIC_FETCH_AND_ADD}
LOCAL_OPS = {W.IBV_WR_BIND_MW, W.IBV_WR_LOCAL_INV}     # no packets: run at fetch (core/mw.py)
IN_FLIGHT = -1        # rnic_dp_swqe.status while the WQE is not finished


class InFlight:
    """core/'s handle on an in-flight send WQE: its descriptor `d` (the data plane's copy,
    validated by rnic_dp_swqe_load), plus the atomic operands, which only core/ uses."""

    __slots__ = ("d", "idx", "compare_add", "swap")

    def __init__(self, d, idx: int):
        self.d = d                  # struct rnic_dp_swqe * (its slot in the QP's array)
        self.idx = idx              # the SQ index it was made for (slots are reused)
        self.compare_add = self.swap = 0

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

    @property
    def is_read_or_atomic(self) -> bool:
        return self.opcode == W.IBV_WR_RDMA_READ or self.opcode in ATOMICS


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

    def wqe_at(self, psn: int) -> InFlight | None:
        for w in self.wqes:
            d = psn_diff(psn, w.first_psn)
            if 0 <= d < w.npkts:
                return w
        return None

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
    def _outstanding_rd_atomic(self) -> int:
        return sum(1 for w in self.wqes if w.is_read_or_atomic and w.status is None)

    def fetch(self) -> bool:
        """Fetch the next WQE with the data plane's functions (copied out of the ring once,
        validated, given PSNs). False if none can be fetched now (ring empty, rd_atomic
        limit, fence, PSN span) or the QP failed."""
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
        if w.status is None and w.is_read_or_atomic:
            if self._outstanding_rd_atomic() >= max(1, qp.attr["max_rd_atomic"]):
                return False
        if w.status is None and w.flags & SendFlags.IBV_SEND_FENCE and \
                self._outstanding_rd_atomic():
            return False       # IBTA 10.8.3.3: fence waits for prior READs/atomics
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
        if w.opcode in ATOMICS:
            w.compare_add, w.swap = int(self._hdr.compare_add), int(self._hdr.swap)
        return True

    # ---- transmitting --------------------------------------------------------------------
    def pump(self, now: float):
        """Send what the window allows. The data plane fetches and sends SEND/WRITE WQEs;
        this loop fetches the others (READ, atomic, fenced, bad) and sends READ/atomic
        requests, once per WQE."""
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
            elif rc == lib.RNIC_DP_PUMP_SLOW:
                w = self.wqe_at(self.send_psn)
                if w is None:       # cannot happen: send_psn is always inside a fetched WQE
                    dev.counters.inc("internal_psn_error")
                    self.send_psn = self.next_psn
                    continue
                self.send_psn = self._send_request(w, self.send_psn)
            elif rc == lib.RNIC_DP_PUMP_TX_FULL:
                dev.spill_tx()
            else:
                break
        self._prune()

    def _send_request(self, w: InFlight, psn: int) -> int:
        """Emit the READ or atomic request of w at psn; return the PSN after it."""
        qp = self.qp
        p = Packet(opcode=0, dest_qp=qp.attr["dest_qp_num"], psn=psn, ackreq=True)
        if w.opcode == W.IBV_WR_RDMA_READ:
            # A READ goes out as requests of READ_CHUNK packets. A re-issued one ends at its
            # original request's end: the responder may never have seen the next request,
            # and must not answer PSNs beyond its own expected PSN as a "duplicate".
            k, mtu = psn_diff(psn, w.first_psn), qp.mtu
            off = k * mtu
            n = min(w.length - off, (READ_CHUNK - k % READ_CHUNK) * mtu)
            p.opcode = op.Opcode.RC_RDMA_READ_REQUEST
            p.reth_va, p.reth_rkey, p.reth_len = w.remote_addr + off, w.rkey, n
            nxt = psn_add(psn, max(1, -(-n // mtu)))
        else:
            cas = w.opcode == W.IBV_WR_ATOMIC_CMP_AND_SWP
            p.opcode = op.Opcode.RC_COMPARE_SWAP if cas else op.Opcode.RC_FETCH_ADD
            p.atomic_va, p.atomic_rkey = w.remote_addr, w.rkey
            p.atomic_swap_add = w.swap if cas else w.compare_add
            p.atomic_compare = w.compare_add
            nxt = psn_add(psn, 1)
        if self.dp.xrc:     # Annex A14.4: the same request under XRC's opcode, with XRCETH
            p.opcode, p.xrc_srqn = p.opcode | XRC_OPBASE, w.d.xrc_srqn
        qp.emit(p)
        dev = qp.device.dp
        lib.rnic_dp_sent(dev, self.dp, psn, nxt)
        return nxt

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

"""RC requester: turns send WQEs into request packets (IBTA 9.7.1-9.7.2, segmentation 9.7.7).

Every fetched WQE gets its PSN range when it is fetched; `send_psn` walks those ranges and is
rewound to the oldest unacknowledged PSN for go-back-N retransmission (9.7.5.1). READs are
issued as requests of at most READ_CHUNK response packets, so that the responder never bursts
more than the window; a retransmitted or continued READ is a request for the remaining range
(what IBTA requires of a re-issued READ, 9.7.4.1.4).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rnicd.core.resources import SGList, resolve_sges
from rnicd.wire import opcodes as op
from rnicd.wire.abi import WC_OPCODE_OF_WR as WC_OPCODE
from rnicd.wire.abi import Access, QPState, SendFlags, WCStatus, WROpcode
from rnicd.wire.roce import Packet, psn_add, psn_diff

WINDOW = 128          # most request/response packets in flight per QP
MIN_WINDOW = 4        # the congestion window never shrinks below this
READ_CHUNK = 64       # response packets per READ request
ACKREQ_EVERY = 32     # ask for an ACK at least this often inside long messages

W = WROpcode
RC_OPCODES = {W.IBV_WR_SEND, W.IBV_WR_SEND_WITH_IMM, W.IBV_WR_RDMA_WRITE,
              W.IBV_WR_RDMA_WRITE_WITH_IMM, W.IBV_WR_RDMA_READ, W.IBV_WR_ATOMIC_CMP_AND_SWP,
              W.IBV_WR_ATOMIC_FETCH_AND_ADD}
SENDS = {W.IBV_WR_SEND, W.IBV_WR_SEND_WITH_IMM}
WRITES = {W.IBV_WR_RDMA_WRITE, W.IBV_WR_RDMA_WRITE_WITH_IMM}
ATOMICS = {W.IBV_WR_ATOMIC_CMP_AND_SWP, W.IBV_WR_ATOMIC_FETCH_AND_ADD}
WITH_IMM = {W.IBV_WR_SEND_WITH_IMM, W.IBV_WR_RDMA_WRITE_WITH_IMM}
MAX_MSG = 1 << 31


@dataclass(slots=True, eq=False)
class SendWQE:
    idx: int                 # ring index, free-running
    wr_id: int
    opcode: int
    flags: int
    imm: int
    remote_addr: int
    rkey: int
    compare_add: int
    swap: int
    sgl: SGList | None
    inline: bytes | None
    length: int
    first_psn: int = 0
    npkts: int = 1           # PSNs the WQE consumes
    status: WCStatus | None = None   # set when the WQE is finished

    @property
    def is_read_or_atomic(self) -> bool:
        return self.opcode == W.IBV_WR_RDMA_READ or self.opcode in ATOMICS

    def payload(self, off: int, n: int):
        if self.inline is not None:
            return memoryview(self.inline)[off:off + n]
        return self.sgl.gather(off, n) if n else b""


class Requester:
    def __init__(self, qp):
        self.qp = qp
        self.wqes: deque[SendWQE] = deque()    # fetched, not yet retired, in PSN order
        self.sq_next = 0                       # next ring index to fetch
        self.reset_psn(0)

    def reset_psn(self, psn: int):
        self.next_psn = psn      # next PSN to assign
        self.send_psn = psn      # next PSN to transmit
        self.high_psn = psn      # PSN after the highest ever sent: below it means a resend
        self.cwnd = float(WINDOW)   # AIMD: halved on each loss, +1/cwnd per packet acked

    def reset(self):
        self.wqes.clear()
        ring = self.qp.sq_ring
        self.sq_next = ring.hdr.prod if ring is not None else 0
        if ring is not None:
            ring.store_cons(self.sq_next)

    # ---- fetching ------------------------------------------------------------------------
    def _outstanding_rd_atomic(self) -> int:
        return sum(1 for w in self.wqes if w.is_read_or_atomic and w.status is None)

    def fetch(self) -> bool:
        """Copy the next WQE out of the SQ ring, validate it and give it PSNs. False if none
        can be fetched now (ring empty, rd_atomic limit or fence)."""
        qp = self.qp
        ring = qp.sq_ring
        prod = ring.load_prod()
        queued = (prod - self.sq_next) & 0xFFFFFFFF
        if queued == 0:
            return False
        if (prod - ring.hdr.cons) & 0xFFFFFFFF > ring.num_entries:
            qp.device.counters.inc("sq_ring_corrupt")
            qp.fatal("send queue producer index out of range", 0.0)
            return False
        raw = ring.send_wqe(self.sq_next)
        opcode, flags = int(raw.opcode), int(raw.send_flags)
        if opcode == W.IBV_WR_RDMA_READ or opcode in ATOMICS:
            if self._outstanding_rd_atomic() >= max(1, qp.attr["max_rd_atomic"]):
                return False
        if flags & SendFlags.IBV_SEND_FENCE and self._outstanding_rd_atomic():
            return False       # IBTA 10.8.3.3: fence waits for prior READs/atomics
        w = self._copy(raw, self.sq_next)
        self.sq_next = (self.sq_next + 1) & 0xFFFFFFFF
        self.wqes.append(w)
        if w.status is not None:
            qp.fatal(f"bad send WQE wr_id={w.wr_id}: {w.status.name}", 0.0)
            return False
        w.first_psn = self.next_psn
        if w.opcode in SENDS or w.opcode in WRITES or w.opcode == W.IBV_WR_RDMA_READ:
            w.npkts = max(1, -(-w.length // qp.mtu))
        self.next_psn = psn_add(self.next_psn, w.npkts)
        return True

    def _copy(self, raw, idx) -> SendWQE:
        qp = self.qp
        opcode, flags = int(raw.opcode), int(raw.send_flags)
        w = SendWQE(idx, int(raw.wr_id), opcode, flags, int(raw.imm_data),
                    int(raw.remote_addr), int(raw.rkey), int(raw.compare_add), int(raw.swap),
                    None, None, 0)
        if opcode not in RC_OPCODES:
            w.status = WCStatus.IBV_WC_LOC_QP_OP_ERR
            return w
        if flags & SendFlags.IBV_SEND_INLINE:
            n = int(raw.inline_len)
            if n > qp.cap.max_inline_data or opcode not in SENDS | WRITES:
                w.status = WCStatus.IBV_WC_LOC_LEN_ERR
                return w
            w.inline = bytes(qp.device.native.ffi.buffer(raw.sg, n))
            w.length = n
            return w
        nsge = int(raw.num_sge)
        if nsge > qp.cap.max_send_sge:
            w.status = WCStatus.IBV_WC_LOC_LEN_ERR
            return w
        sges = [(int(raw.sg[i].addr), int(raw.sg[i].length), int(raw.sg[i].lkey))
                for i in range(nsge)]
        # READ and atomic results are written locally: the SGEs need LOCAL_WRITE (10.6.3.1)
        need = Access.IBV_ACCESS_LOCAL_WRITE if w.is_read_or_atomic else Access(0)
        w.sgl, status = resolve_sges(qp.device.keys, qp.pd, sges, need)
        if w.sgl is None:
            w.status = status
            return w
        w.length = w.sgl.length
        if w.length > MAX_MSG or (opcode in ATOMICS and w.length != 8):
            w.status = WCStatus.IBV_WC_LOC_LEN_ERR
        return w

    # ---- transmitting --------------------------------------------------------------------
    def wqe_at(self, psn: int) -> SendWQE | None:
        for w in self.wqes:
            d = psn_diff(psn, w.first_psn)
            if 0 <= d < w.npkts:
                return w
        return None

    def rewind(self, psn: int):
        """Go back N: retransmit from `psn` (IBTA 9.7.5.1). A loss also halves the window:
        go-back-N resends a whole window per loss, so a lossy path wants a small one."""
        if psn_diff(psn, self.send_psn) < 0:
            self.send_psn = psn
        self.cwnd = max(MIN_WINDOW, self.cwnd / 2)

    def acked(self, npkts: int):
        self.cwnd = min(WINDOW, self.cwnd + npkts / self.cwnd)

    def pump(self, now: float):
        """Send what the window allows: retransmissions first, then new WQEs."""
        qp = self.qp
        if qp.state == QPState.IBV_QPS_ERR:
            self.flush()
            return
        if qp.state != QPState.IBV_QPS_RTS or qp.completer.rnr_until is not None:
            return
        comp = qp.completer
        if psn_diff(self.send_psn, comp.una) < 0:
            self.send_psn = comp.una     # an ACK of the old round overtook a rewind
        while psn_diff(self.send_psn, comp.una) < self.cwnd:
            if self.send_psn == self.next_psn and not self.fetch():
                break
            if qp.state != QPState.IBV_QPS_RTS:
                return
            w = self.wqe_at(self.send_psn)
            if w is None:      # cannot happen: send_psn is always inside a fetched WQE
                qp.device.counters.inc("internal_psn_error")
                self.send_psn = self.next_psn
                continue
            self.send_psn = self._send_one(w, self.send_psn)
            comp.arm_timer(now)

    def _send_one(self, w: SendWQE, psn: int) -> int:
        """Emit the packet of `w` at `psn`; return the PSN after it."""
        qp = self.qp
        k = psn_diff(psn, w.first_psn)
        p = Packet(opcode=0, dest_qp=qp.attr["dest_qp_num"], psn=psn)
        if psn_diff(psn, self.high_psn) < 0:
            qp.counters.inc("retransmitted_pkts")
        if w.opcode == W.IBV_WR_RDMA_READ:
            # A READ goes out as requests of READ_CHUNK packets. A re-issued one ends at its
            # original request's end: the responder may never have seen the next request,
            # and must not answer PSNs beyond its own expected PSN as a "duplicate".
            mtu = qp.mtu
            off = k * mtu
            n = min(w.length - off, (READ_CHUNK - k % READ_CHUNK) * mtu)
            p.opcode = op.Opcode.RC_RDMA_READ_REQUEST
            p.reth_va, p.reth_rkey, p.reth_len = w.remote_addr + off, w.rkey, n
            p.ackreq = True
            qp.emit(p)
            nxt = psn_add(psn, max(1, -(-n // mtu)))
        elif w.opcode in ATOMICS:
            p.opcode = (op.Opcode.RC_COMPARE_SWAP if w.opcode == W.IBV_WR_ATOMIC_CMP_AND_SWP
                        else op.Opcode.RC_FETCH_ADD)
            p.atomic_va, p.atomic_rkey = w.remote_addr, w.rkey
            p.atomic_swap_add = w.swap if w.opcode == W.IBV_WR_ATOMIC_CMP_AND_SWP \
                else w.compare_add
            p.atomic_compare = w.compare_add
            p.ackreq = True
            qp.emit(p)
            nxt = psn_add(psn, 1)
        else:
            mtu = qp.mtu
            off = k * mtu
            n = min(mtu, w.length - off)
            pos = op.position(k, w.npkts)
            last = pos in (op.Position.LAST, op.Position.ONLY)
            imm = w.opcode in WITH_IMM and last
            if w.opcode in SENDS:
                p.opcode = op.send_opcode(pos, imm, False)
                p.se = last and bool(w.flags & SendFlags.IBV_SEND_SOLICITED)
            else:
                p.opcode = op.write_opcode(pos, imm)
                if pos in (op.Position.FIRST, op.Position.ONLY):
                    p.reth_va, p.reth_rkey, p.reth_len = w.remote_addr, w.rkey, w.length
            if imm:
                p.imm = w.imm
            # ask for an ACK before the window runs dry, or the timer is all that is left
            in_flight = psn_diff(psn, qp.completer.una) + 1
            p.ackreq = (last or k % ACKREQ_EVERY == ACKREQ_EVERY - 1
                        or in_flight >= self.cwnd / 2)
            qp.emit(p, w.payload(off, n))
            nxt = psn_add(psn, 1)
        if psn_diff(nxt, self.high_psn) > 0:
            self.high_psn = nxt
        return nxt

    # ---- retiring --------------------------------------------------------------------------
    def retire(self):
        """Complete finished WQEs from the head, in order (IBTA 10.8.3), and free their slots."""
        qp = self.qp
        ring = qp.sq_ring
        while self.wqes and self.wqes[0].status is not None:
            w = self.wqes.popleft()
            signaled = qp.sq_sig_all or w.flags & SendFlags.IBV_SEND_SIGNALED
            if signaled or w.status != WCStatus.IBV_WC_SUCCESS:
                qp.complete_send(w.wr_id, w.status, WC_OPCODE.get(w.opcode, 0), w.length)
            ring.store_cons((w.idx + 1) & 0xFFFFFFFF)

    def flush(self):
        """Error state: finish everything outstanding or still in the ring with FLUSH_ERR."""
        qp = self.qp
        ring = qp.sq_ring
        for w in self.wqes:
            if w.status is None:
                w.status = WCStatus.IBV_WC_WR_FLUSH_ERR
        self.retire()
        prod = ring.load_prod()
        if (prod - ring.hdr.cons) & 0xFFFFFFFF > ring.num_entries:
            prod = ring.hdr.cons       # corrupt producer index: nothing trustworthy to flush
        while self.sq_next != prod:
            raw = ring.send_wqe(self.sq_next)
            qp.complete_send(int(raw.wr_id), WCStatus.IBV_WC_WR_FLUSH_ERR,
                             WC_OPCODE.get(int(raw.opcode), 0))
            self.sq_next = (self.sq_next + 1) & 0xFFFFFFFF
            ring.store_cons(self.sq_next)
        ring.hdr.error = 1
        self.send_psn = self.next_psn

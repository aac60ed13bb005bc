"""Verbs resources as the device sees them: PD, MR, CQ, SRQ, completion channels, and the
shared-memory queues (sans-I/O: ring memory is handed in as buffers by the io layer).

Nothing read from a ring is trusted: entries are copied out, then validated.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from rnicd import native
from rnicd.wire.abi import Access

# IBTA 10.6.3: keys are 32 bits; the low 8 bits are the "key" part the consumer may vary,
# the high 24 bits index the table. We draw the low 8 bits at random so stale keys miss.
KEY_INDEX_SHIFT = 8


class PD:
    __slots__ = ("handle", "owner", "refs", "uid")
    _uids = itertools.count(1)

    def __init__(self, handle: int, owner):
        self.handle = handle
        self.owner = owner
        self.refs = 0           # MRs, QPs, SRQs using it
        self.uid = next(PD._uids)   # device-wide identity, what the data plane compares


class MR:
    """A registered region: client VA [iova, iova+length) backed by bytes [start,
    start+length) of `mapping` (the page-aligned mapping of the client's memfd pieces).
    `buf` and `view` are that range (a writable memoryview); `dp` is the data plane's view
    of it (struct rnic_dp_mr), pointing into the same mapping."""

    __slots__ = ("handle", "pd", "iova", "length", "access", "lkey", "rkey", "mapping", "buf",
                 "view", "_region", "dp")

    def __init__(self, handle, pd, iova, length, access, lkey, rkey, mapping, start=0):
        self.handle = handle
        self.pd = pd
        self.access = Access(access)
        self.lkey = lkey
        self.rkey = rkey
        self.dp = native.shared_new("struct rnic_dp_mr *", {
            "pd": pd.uid, "rkey": rkey, "access": int(access)})
        self._attach(mapping, start, iova, length)

    def _attach(self, mapping, start, iova, length):
        self.mapping = mapping              # keeps the mapping alive
        self.iova = iova
        self.length = length
        self.buf = self.view = memoryview(mapping)[start:start + length]
        self._region = native.region(self.buf)
        dp = self.dp
        dp.base, dp.iova, dp.length = self._region, iova, length

    def retarget(self, mapping, start, iova, length):
        """ibv_rereg_mr's new translation: the same MR (keys, dp slot) over other memory.
        -> the old mapping, for the caller to unmap (forget_region has run before)."""
        old = self.mapping
        self.release()
        self._attach(mapping, start, iova, length)
        return old

    def set_pd(self, pd):
        self.pd = pd
        self.dp.pd = pd.uid

    def set_access(self, access):
        self.access = Access(access)
        self.dp.access = int(access)

    def pointer(self, addr: int):
        """uint8_t * to client address addr (checked by offset_of beforehand)."""
        return self._region + (addr - self.iova)

    def release(self):
        """Drop every reference into the mapping so that it can be unmapped."""
        self.dp.base = native.ffi.NULL
        native.ffi.release(self._region)    # an export of view: released first
        self.view.release()

    def offset_of(self, addr: int, length: int) -> int | None:
        """Offset of [addr, addr+length) inside the region, or None if it is not all inside."""
        off = addr - self.iova
        if off < 0 or length < 0 or off + length > self.length:
            return None
        return off


class KeyTable:
    """lkey/rkey -> MR, with random key bits (the device owns one). The index part of a key
    is also the MR's slot in the data plane's table (`dp`, struct rnic_dp_mr *[size])."""

    def __init__(self, rng, size: int):
        self._rng = rng
        self._slots: dict[int, MR] = {}
        self._next_index = 1
        self.windows = 0            # memory windows among the entries
        self.size = size
        self.dp = native.shared_new("struct rnic_dp_mr *[]", size)

    def allocate(self) -> tuple[int, int]:
        """A key whose index slot is free (index 0 is never used: key 0 is no key)."""
        if len(self._slots) >= self.size - 1:     # MRs and windows share the table
            raise OverflowError("no free memory key")
        while self._next_index in self._slots:
            self._next_index = self._next_index % (self.size - 1) + 1
        index = self._next_index
        self._next_index = index % (self.size - 1) + 1
        key = (index << KEY_INDEX_SHIFT) | self._rng.randrange(256)
        return key, key          # lkey == rkey, as rxe and mlx5 do

    def insert(self, mr: MR):
        """An MR, or a memory window (core/mw.py: lkey None, an rkey only)."""
        index = mr.rkey >> KEY_INDEX_SHIFT
        self._slots[index] = mr
        self.dp[index] = mr.dp
        self.windows += mr.lkey is None

    def remove(self, mr: MR):
        index = mr.rkey >> KEY_INDEX_SHIFT
        if self._slots.pop(index, None) is not None:
            self.windows -= mr.lkey is None
        self.dp[index] = native.ffi.NULL

    def by_lkey(self, key: int) -> MR | None:
        mr = self._slots.get(key >> KEY_INDEX_SHIFT)
        return mr if mr is not None and mr.lkey == key else None

    def by_rkey(self, key: int) -> MR | None:
        mr = self._slots.get(key >> KEY_INDEX_SHIFT)
        return mr if mr is not None and mr.rkey == key else None

    def __len__(self):
        """MRs in the table (windows are counted in `windows`)."""
        return len(self._slots) - self.windows


@dataclass(eq=False)
class CompChannel:
    handle: int
    owner: object
    fd: int = -1                 # eventfd, owned by the io layer


@dataclass(slots=True)
class CQEntry:
    wr_id: int
    status: int
    opcode: int
    byte_len: int = 0
    imm_data: int = 0
    qp_num: int = 0
    src_qp: int = 0
    wc_flags: int = 0
    solicited: bool = False


class CQ:
    """Completion queue: CQEs go into the ring the client polls, through the data plane's
    rnic_dp_cq_push (one implementation for both planes); `dp` is its view of the ring."""

    _uids = itertools.count(1)

    def __init__(self, handle, owner, ring: native.RingView, channel: CompChannel | None,
                 comp_vector: int = 0):
        self.handle = handle
        self.owner = owner
        self.channel = channel
        self.comp_vector = comp_vector
        self.refs = 0            # QPs using it
        self.uid = next(CQ._uids)   # device-wide identity, what the data plane reports
        self.dp = native.shared_new("struct rnic_dp_cq *", {
            "id": self.uid, "has_channel": int(channel is not None),
            "chan_fd": channel.fd if channel is not None else -1, "engine": comp_vector})
        self.ring = ring

    @property
    def ring(self) -> native.RingView:
        return self._ring

    @ring.setter
    def ring(self, ring: native.RingView):
        """Point the data plane at a (new, after resize_cq) ring."""
        self._ring = ring
        self.dp.hdr = ring.hdr
        self.dp.entries = native.ffi.cast("uint8_t *", ring.hdr) + ring.hdr_size
        self.dp.mask = ring.num_entries - 1

    @property
    def cqe(self) -> int:
        return self.ring.num_entries - 1   # as ibv reports: one slot kept free


@dataclass(slots=True)
class RecvWQE:
    wr_id: int
    sges: list = field(default_factory=list)     # (addr, length, lkey), at most the cap
    num_sge: int = 0            # as the client wrote it: more than the cap is a bad WQE


class RecvQueue:
    """An RQ or SRQ ring read by the device (the client produces)."""

    def __init__(self, ring: native.RingView, max_sge: int):
        self.ring = ring
        self.max_sge = max_sge

    def available(self) -> int:
        n = (self.ring.load_prod() - self.ring.hdr.cons) & 0xFFFFFFFF
        return n if n <= self.ring.num_entries else -1      # -1: client broke the ring

    def post(self, wr_id: int, sges: list[tuple[int, int, int]]) -> None:
        """Post a receive WQE on the client's behalf (establishment offload pre-posts
        buffers before the client has the ring). Only while the client does not post."""
        ring = self.ring
        prod = ring.load_prod()
        if (prod - ring.hdr.cons) & 0xFFFFFFFF >= ring.num_entries:
            raise OverflowError("receive queue full")
        w = ring.recv_wqe(prod)
        w.wr_id, w.num_sge = wr_id, len(sges)
        for i, (addr, length, lkey) in enumerate(sges):
            w.sg[i].addr, w.sg[i].length, w.sg[i].lkey = addr, length, lkey
        ring.store_prod((prod + 1) & 0xFFFFFFFF)

    def take(self) -> RecvWQE | None:
        """Pop the next receive WQE (copied out), or None if empty or corrupt."""
        ring = self.ring
        if self.available() <= 0:
            return None
        cons = ring.hdr.cons
        w = ring.recv_wqe(cons)
        raw = int(w.num_sge)           # read once; the SGEs beyond the cap are never read
        wqe = RecvWQE(int(w.wr_id), [(int(w.sg[i].addr), int(w.sg[i].length), int(w.sg[i].lkey))
                                     for i in range(min(raw, self.max_sge))], raw)
        ring.store_cons((cons + 1) & 0xFFFFFFFF)
        return wqe


class XRCDomain:
    """An XRC domain (IBTA Annex A14.2.1): the XRC SRQs and TGT QPs that may serve one
    another. Device-wide: every context that opens the same file (inode `key`) shares it;
    a private domain (fd -1) has key None. `opens` counts the contexts' handles on it."""

    __slots__ = ("uid", "key", "opens")
    _uids = itertools.count(1)

    def __init__(self, key):
        self.uid = next(XRCDomain._uids)
        self.key = key
        self.opens = 0


@dataclass(eq=False)
class XRCD:
    """One context's handle on an XRC domain (ibv_open_xrcd)."""
    handle: int
    owner: object
    domain: XRCDomain
    refs: int = 0               # XRC SRQs and TGT QPs created through it


class SRQ:
    def __init__(self, handle, owner, pd: PD, ring: native.RingView, max_wr: int, max_sge: int,
                 limit: int, xrcd: XRCD | None = None, cq: CQ | None = None, srq_num: int = 0):
        self.handle = handle
        self.owner = owner
        self.pd = pd
        self.rq = RecvQueue(ring, max_sge)
        self.max_wr = max_wr
        self.max_sge = max_sge
        self.limit = limit          # 0 = disarmed (IBTA 10.2.9.4: one-shot limit event)
        self.refs = 0
        # XRC SRQ (Annex A14.2.2): its domain, the CQ its receives complete into, and the
        # device-wide number a requester names in the XRCETH
        self.xrcd = xrcd
        self.cq = cq
        self.srq_num = srq_num

    def take(self):
        wqe = self.rq.take()
        fire = False
        if wqe is not None and self.limit and self.rq.available() < self.limit:
            self.limit = 0
            fire = True
        return wqe, fire

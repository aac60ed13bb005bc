"""Completion queues and channels: ``CQ``, ``CompChannel``, ``WC``, as pyverbs.cq.

``CQ.poll`` reads completions straight from the CQ ring (no socket message): acquire-load
``prod``, copy the CQEs, release-store ``cons``. ``CQ.req_notify`` arms the CQ in its ring
header; the daemon then increments the header's ``events`` counter and writes the channel's
eventfd on the next matching completion. asyncio helpers: ``CQ.wait``, ``CQ.poll_async``,
``CompChannel.get_cq_event_async``.
"""
import asyncio
import collections
import errno
import os
import select
import time

from rnicd.wire.abi import WCFlags, WCOpcode, WCStatus
from rnicd.wire.rings import CQE, RingKind

from ._rings import U32, Ring, native
from .base import RnicCM
from .device import need_int
from .errors import RnicError

# An empty poll yields the CPU (to an engine waiting for it on a 2-vCPU box); RNIC_POLL_YIELD=0
# turns it off.
_POLL_YIELD = os.environ.get("RNIC_POLL_YIELD", "1") != "0"

_BACKOFF_START, _BACKOFF_MAX = 50e-6, 5e-3
_unpack_cqe = CQE.unpack_from


class WC:
    """A work completion (struct ibv_wc), with pyverbs' attribute names."""

    __slots__ = ("wr_id", "status", "opcode", "vendor_err", "byte_len", "imm_data", "qp_num",
                 "src_qp", "wc_flags", "pkey_index", "slid", "sl", "dlid_path_bits")

    def __init__(self, wr_id=0, status=0, opcode=0, vendor_err=0, byte_len=0, qp_num=0,
                 src_qp=0, imm_data=0, wc_flags=0, pkey_index=0, slid=0, sl=0,
                 dlid_path_bits=0):
        self.wr_id, self.status, self.opcode = wr_id, status, opcode
        self.vendor_err, self.byte_len, self.imm_data = vendor_err, byte_len, imm_data
        self.qp_num, self.src_qp, self.wc_flags = qp_num, src_qp, wc_flags
        self.pkey_index, self.slid, self.sl = pkey_index, slid, sl
        self.dlid_path_bits = dlid_path_bits

    @classmethod
    def from_cqe(cls, buf, off: int) -> "WC":
        """The CQE at buf[off:] (struct rnic_cqe, read with one unpack)."""
        (wr_id, status, opcode, vendor_err, byte_len, imm, qpn, src_qp, flags, pkey, slid, sl,
         dlid) = _unpack_cqe(buf, off)
        return cls(wr_id, status, opcode, vendor_err, byte_len, qpn, src_qp, imm, flags, pkey,
                   slid, sl, dlid)

    @property
    def invalidated_rkey(self) -> int:
        """IBV_WC_WITH_INV: the rkey a SEND with Invalidate invalidated (ibv_wc's
        invalidated_rkey shares imm_data's place)."""
        return self.imm_data

    def __repr__(self) -> str:
        def name(enum, v):
            try:
                return enum(v).name
            except ValueError:
                return str(v)
        flags = "|".join(f.name for f in WCFlags if self.wc_flags & f) or "0"
        imm = f", imm_data={self.imm_data:#x}" if self.wc_flags & WCFlags.IBV_WC_WITH_IMM else ""
        return (f"WC(wr_id={self.wr_id}, status={name(WCStatus, self.status)}, "
                f"opcode={name(WCOpcode, self.opcode)}, byte_len={self.byte_len}, "
                f"qp_num={self.qp_num}, src_qp={self.src_qp}, wc_flags={flags}{imm}, "
                f"vendor_err={self.vendor_err})")


class CompChannel(RnicCM):
    """A completion channel: an eventfd the daemon writes when an armed CQ of the channel
    gets a completion. ``get_cq_event`` returns the CQ that has the event."""

    _destroy_verb = "destroy_comp_channel"
    _handle_key = "channel"

    def __init__(self, ctx):
        ctx._check_open()
        r, fds = ctx._call("create_comp_channel", nfds=1)
        self._fd = fds[0]
        try:
            self.handle = need_int(r, "channel", "create_comp_channel")
        except RnicError:
            os.close(self._fd)
            raise
        self.context = ctx
        self._pending = collections.deque()   # CQs whose event was not handed out yet
        self._waiters = set()
        self._loop = None
        self._init_cm(ctx)
        ctx.add_ref(self)

    def fileno(self) -> int:
        return self._fd

    # ---- reading the eventfd ------------------------------------------------------------
    def _drain(self, timeout: float | None = 0) -> bool:
        """Wait up to ``timeout`` for the eventfd, read it and note the CQs whose ring
        ``events`` counter moved. The fd may be blocking or not (its flags are shared with
        the daemon and are left alone), so it is only read once poll says it is ready. The
        control socket hanging up is the daemon gone: no event will ever come (EIO)."""
        conn = self.context._conn
        p = select.poll()
        p.register(self._fd, select.POLLIN)
        if conn._sock is not None:
            p.register(conn._sock.fileno(), select.POLLRDHUP)
        ready = p.poll(None if timeout is None else timeout * 1000)
        if any(fd != self._fd for fd, _ in ready) and conn.gone():
            raise RnicError(errno.EIO, "get_cq_event: the daemon is gone")
        if not any(fd == self._fd for fd, _ in ready):
            return False
        try:
            os.read(self._fd, 8)
        except (BlockingIOError, InterruptedError):
            return False
        for cq in list(self._children):
            if cq.closed:
                continue
            seen = cq._ring_events()
            if seen != cq._events_seen:
                cq._events_seen = seen
                if cq not in self._pending:
                    self._pending.append(cq)
        return True

    def _deliver(self, expected_cq):
        cq = self._pending.popleft()
        cq._events_delivered += 1
        if expected_cq is not None and cq is not expected_cq:
            raise RnicError(errno.EINVAL, f"completion event on {cq!r}, expected {expected_cq!r}")
        return cq

    def get_cq_event(self, expected_cq=None, timeout: float | None = None):
        """Block until a CQ of this channel has a completion event; return that CQ (None
        after ``timeout`` seconds). Acknowledge it with ack_cq_events / CQ.ack_events."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._drain(left) and left == 0.0:
                return None
        return self._deliver(expected_cq)

    async def get_cq_event_async(self, expected_cq=None):
        """get_cq_event for asyncio: waits with loop.add_reader, never blocks the loop."""
        self._check_open()
        while not self._pending:
            fut = self._wait_readable()
            try:
                await fut
            finally:
                self._forget(fut)
        return self._deliver(expected_cq)

    def ack_cq_events(self, cq, num_events: int = 1) -> None:
        cq.ack_events(num_events)

    # ---- asyncio waiting: one reader callback for all the waiters of this channel ---------
    def _wait_readable(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RnicError(errno.EINVAL, "a CompChannel can be awaited from one event loop")
        fut = loop.create_future()
        if not self._waiters:
            loop.add_reader(self._fd, self._on_readable)
            self._loop = loop
        self._waiters.add(fut)
        return fut

    def _on_readable(self) -> None:
        self._drain(0)
        self._stop_reader()
        waiters, self._waiters = self._waiters, set()
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def _forget(self, fut) -> None:
        self._waiters.discard(fut)
        if not self._waiters:
            self._stop_reader()

    def _stop_reader(self) -> None:
        if self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            self._loop = None

    def _take(self, cq) -> None:
        """A CQ.wait() consumed the events of ``cq``: drop them from the pending queue."""
        try:
            self._pending.remove(cq)
        except ValueError:
            pass

    def _release_local(self) -> None:
        self._stop_reader()
        for f in self._waiters:
            if not f.done():
                f.set_exception(RnicError(errno.EBADF, "the CompChannel was closed"))
        self._waiters = set()
        self._pending.clear()
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)


class CQ(RnicCM):
    """A completion queue: ``CQ(ctx, cqe, cq_context=None, channel=None, comp_vector=0)``."""

    _place = None            # a parent domain's allocators (CQEX with parent_domain)

    _destroy_verb = "destroy_cq"
    _handle_key = "cq"

    def __init__(self, ctx, cqe, cq_context=None, channel=None, comp_vector=0):
        ctx._check_open()
        if isinstance(cqe, float) and cqe.is_integer():
            cqe = int(cqe)   # pyverbs (Cython) accepts an integral float such as max_cqe/2
        if channel is not None:
            channel._check_open()
        r, fds = ctx._call("create_cq", {"cqe": cqe, "comp_vector": comp_vector,
                                         "channel": None if channel is None else channel.handle},
                           nfds=1)
        try:
            self.handle = need_int(r, "cq", "create_cq")
        except RnicError:
            os.close(fds[0])
            raise
        try:
            self.cqe = need_int(r, "cqe", "create_cq")
            self._ring = Ring(fds[0], r.get("size"), RingKind.CQ, "create_cq",
                              place=self._place)
        except BaseException:
            ctx._destroy("destroy_cq", {"cq": self.handle})
            raise
        self.context = ctx
        self._empty_polls = 0    # poll() looks at the daemon every 4096 of them
        self.cq_context = cq_context
        self.channel = channel   # pyverbs: comp_channel (a property below)
        self.comp_vector = comp_vector
        n = native()
        self._ffi, self._lib = n.ffi, n.lib
        self._events_seen = self._ring_events()
        self._events_delivered = self._events_acked = 0
        self._init_cm(ctx)
        ctx.add_ref(self)
        ctx._register("cq", self.handle, self)
        if channel is not None:
            channel.add_ref(self)

    def _ring_events(self) -> int:
        return self._lib.rnic_load_acquire(self._ffi.addressof(self._ring.hdr, "events"))

    def _has_cqe(self) -> bool:
        rv = self._ring.rv
        return rv.load_prod() != rv.load_cons()

    @property
    def comp_channel(self):
        """The CompChannel given at creation (pyverbs' name; ``channel`` is rnic's)."""
        return self.channel

    def poll(self, num_entries: int = 1):
        """Up to ``num_entries`` completions: ``(npolled, [WC, ...])``."""
        self._check_open()
        ring = self._ring
        rv = ring.rv
        prod = rv.load_prod()
        cons = rv.load_cons()
        avail = (prod - cons) & U32
        if avail > ring.num_entries:
            raise RnicError(errno.EIO, f"CQ {self.handle}: ring indices are corrupt "
                            f"(prod - cons = {avail})")
        if avail == 0 and ring.error():
            raise RnicError(errno.EIO, f"CQ {self.handle} is in error (overrun?); "
                            "destroy it and create a larger one")
        k = min(avail, max(0, num_entries))
        if k:
            mm, offset, from_cqe = ring.mm, rv.offset, WC.from_cqe
            wcs = [from_cqe(mm, offset(cons + i)) for i in range(k)]
            rv.store_cons((cons + k) & U32)
            return k, wcs
        wcs = []
        # the daemon writes every completion: gone, a poller would wait forever (as the C
        # library, docs/c-libraries.md)
        self._empty_polls += 1
        if self._empty_polls % 4096 == 0 and self.context._conn.gone():
            raise RnicError(errno.EIO, f"CQ {self.handle}: rnicd is gone (the control "
                            "connection is closed): no completion will come")
        if _POLL_YIELD:
            # polite polling, as the C library (docs/engines.md); unlike it, no poller_cpu
            # hint: measured, it did not help this client
            os.sched_yield()
        return k, wcs

    def _clean(self, qp_num: int) -> int:
        """Drop the unpolled completions of a QP that went to RESET, as libmlx4/libmlx5 do in
        ibv_modify_qp: the old incarnation's completions (flushed WRs) must not reach the
        poller of the QP brought back to RTS. Other QPs' entries move toward the producer
        end, in order; the daemon may keep producing past ``prod`` meanwhile. -> dropped."""
        rv = self._ring.rv
        prod, cons = rv.load_prod(), rv.load_cons()
        n = (prod - cons) & U32
        if n > self._ring.num_entries:
            return 0
        ffi = native().ffi
        size = ffi.sizeof("struct rnic_cqe")
        freed = 0
        for k in range(n - 1, -1, -1):
            c = rv.cqe(cons + k)
            if c.qp_num == qp_num:
                freed += 1
            elif freed:
                ffi.memmove(rv.cqe(cons + k + freed), c, size)
        if freed:
            rv.store_cons((cons + freed) & U32)
        return freed

    def req_notify(self, solicited_only: bool = False) -> None:
        """Ask for a completion event on the next completion (or the next solicited one).
        An exchange, a full barrier: poll again after arming to close the race."""
        self._check_open()
        arm = self._ffi.addressof(self._ring.hdr, "arm")
        if solicited_only and self._lib.rnic_load_acquire(arm) == 1:
            return   # already armed for any completion, which includes solicited ones
        self._lib.rnic_xchg(arm, 2 if solicited_only else 1)

    def ack_events(self, num_events: int = 1) -> None:
        """ibv_ack_cq_events: bookkeeping only with rnicd."""
        self._events_acked += num_events

    def resize(self, cqe: int) -> None:
        """Resize the CQ; pending completions move to the new ring."""
        self._check_open()
        r, fds = self.context._call("resize_cq", {"cq": self.handle, "cqe": cqe}, nfds=1)
        try:
            actual = need_int(r, "cqe", "resize_cq")
        except RnicError:
            os.close(fds[0])
            raise
        new = Ring(fds[0], r.get("size"), RingKind.CQ, "resize_cq", place=self._place)
        old, self._ring = self._ring, new
        old.release()
        self.cqe = actual
        self._events_seen = self._ring_events()

    async def wait(self, timeout: float | None = None) -> bool:
        """Return True once the CQ holds a completion, False after ``timeout`` seconds.

        With a channel: arm, re-check, await the channel's eventfd (loop.add_reader).
        Without one: poll with a sleep that backs off from 50 us to 5 ms."""
        self._check_open()
        if self._has_cqe():
            return True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self.channel is None:
            delay = _BACKOFF_START
            while True:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return False
                await asyncio.sleep(delay if left is None else min(delay, left))
                self._check_open()
                if self._has_cqe():
                    return True
                delay = min(delay * 2, _BACKOFF_MAX)
        ch = self.channel
        while True:
            self.req_notify()
            if self._has_cqe():
                return True
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            fut = ch._wait_readable()
            try:
                async with asyncio.timeout(left):
                    await fut
            except TimeoutError:
                return self._has_cqe()
            finally:
                ch._forget(fut)
            ch._take(self)
            self._check_open()
            if self._has_cqe():
                return True

    async def poll_async(self, num_entries: int = 1, timeout: float | None = None):
        """``wait`` then ``poll``: ``(npolled, wcs)``, ``(0, [])`` after ``timeout``."""
        if not await self.wait(timeout):
            return 0, []
        return self.poll(num_entries)

    def close(self) -> None:
        if not self._closed and self.channel is not None:
            self.channel._take(self)
        super().close()

    def _release_local(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.release()

    def __repr__(self) -> str:
        return f"CQ(handle={getattr(self, 'handle', None)}, cqe={getattr(self, 'cqe', None)})"


# ---- the extended CQ (ibv_cq_ex: start_poll / next_poll / end_poll, ibv_wc_read_*) -------
WC_EX_FROM_WC = {   # enum ibv_create_cq_wc_flags bits rnicd's CQEs carry
    1 << 0: "BYTE_LEN", 1 << 1: "IMM", 1 << 2: "QP_NUM", 1 << 3: "SRC_QP", 1 << 4: "SLID",
    1 << 5: "SL", 1 << 6: "DLID_PATH_BITS",
}
WC_EX_NOT_OFFERED = {1 << 7: "COMPLETION_TIMESTAMP", 1 << 8: "CVLAN", 1 << 9: "FLOW_TAG",
                     1 << 10: "TM_INFO", 1 << 11: "COMPLETION_TIMESTAMP_WALLCLOCK"}
_ENOENT = errno.ENOENT


class CqInitAttrEx:
    """struct ibv_cq_init_attr_ex (pyverbs' argument order)."""

    def __init__(self, cqe=100, channel=None, comp_vector=0, wc_flags=0, comp_mask=0,
                 flags=0, parent_domain=None):
        self.cqe = cqe
        self.comp_channel = channel
        self.comp_vector = comp_vector
        self.wc_flags = wc_flags
        self.comp_mask = comp_mask
        self.flags = flags
        self.parent_domain = parent_domain
        self.cq_context = None

    def __repr__(self) -> str:
        return (f"CqInitAttrEx(cqe={self.cqe}, wc_flags={self.wc_flags:#x}, "
                f"comp_mask={self.comp_mask:#x}, flags={self.flags:#x})")


class PollCqAttr:
    """struct ibv_poll_cq_attr: comp_mask must be 0."""

    def __init__(self, comp_mask=0):
        self.comp_mask = comp_mask


class CQEX(CQ):
    """An extended CQ: ``CQEX(ctx, CqInitAttrEx)``. ``start_poll()`` returns 0 with the first
    completion current (``wr_id``, ``status`` and the ``read_*`` calls describe it) or
    ENOENT (2) when the CQ is empty; ``poll_next()`` likewise; ``end_poll()`` finishes.
    It is also a CQ: QPs take it as a send/receive CQ, and poll() works."""

    def __init__(self, ctx, init_attr: CqInitAttrEx):
        if not isinstance(init_attr, CqInitAttrEx):
            raise RnicError(errno.EINVAL, "CQEX needs a CqInitAttrEx")
        for bit, name in WC_EX_NOT_OFFERED.items():
            if init_attr.wc_flags & bit:
                raise RnicError(errno.EOPNOTSUPP, f"CQEX: IBV_WC_EX_WITH_{name} is not "
                                "offered by rnicd (no hardware clock, VLAN, flow tags or "
                                "tag matching)")
        if init_attr.wc_flags & ~(sum(WC_EX_FROM_WC) | sum(WC_EX_NOT_OFFERED)):
            raise RnicError(errno.EINVAL, f"CQEX: unknown wc_flags {init_attr.wc_flags:#x}")
        if init_attr.flags:
            raise RnicError(errno.EOPNOTSUPP, "CQEX: creation flags are not offered by rnicd")
        pd = init_attr.parent_domain
        if pd is not None:      # IBV_CQ_INIT_ATTR_MASK_PD: the CQ's ring from its allocators
            from .pd import ParentDomain
            if not isinstance(pd, ParentDomain) or pd.ctx is not ctx:
                raise RnicError(errno.EINVAL, "CQEX: parent_domain must be a ParentDomain of "
                                "this context")
            self._place = pd._placement
        super().__init__(ctx, init_attr.cqe, init_attr.cq_context, init_attr.comp_channel,
                         init_attr.comp_vector)
        self.wc_flags_ex = init_attr.wc_flags
        self._wc = None
        self._polling = False

    def _step(self) -> int:
        n, wcs = self.poll(1)
        self._wc = wcs[0] if n else None
        return 0 if n else _ENOENT

    def start_poll(self, attr: PollCqAttr = None) -> int:
        if self._polling:
            raise RnicError(errno.EINVAL, "CQEX.start_poll: end_poll() first")
        rc = self._step()
        self._polling = rc == 0
        return rc

    def poll_next(self) -> int:
        if not self._polling:
            raise RnicError(errno.EINVAL, "CQEX.poll_next: start_poll() first")
        return self._step()

    def end_poll(self) -> None:
        self._polling = False
        self._wc = None

    def _cur(self) -> WC:
        if self._wc is None:
            raise RnicError(errno.EINVAL, "CQEX: no current completion (start_poll first)")
        return self._wc

    wr_id = property(lambda self: self._cur().wr_id)
    status = property(lambda self: self._cur().status)

    def read_opcode(self) -> int:
        return self._cur().opcode

    def read_vendor_err(self) -> int:
        return self._cur().vendor_err

    def read_byte_len(self) -> int:
        return self._cur().byte_len

    def read_imm_data(self) -> int:
        return self._cur().imm_data

    def read_qp_num(self) -> int:
        return self._cur().qp_num

    def read_src_qp(self) -> int:
        return self._cur().src_qp

    def read_wc_flags(self) -> int:
        return self._cur().wc_flags

    def read_slid(self) -> int:
        return self._cur().slid

    def read_sl(self) -> int:
        return self._cur().sl

    def read_dlid_path_bits(self) -> int:
        return self._cur().dlid_path_bits

    def _no(self, what: str):
        raise RnicError(errno.EOPNOTSUPP, f"CQEX.{what}: not offered by rnicd")

    def read_timestamp(self):
        self._no("read_timestamp")

    def read_completion_wallclock_ns(self):
        self._no("read_completion_wallclock_ns")

    def read_cvlan(self):
        self._no("read_cvlan")

    def read_flow_tag(self):
        self._no("read_flow_tag")

    def read_tm_info(self):
        self._no("read_tm_info")

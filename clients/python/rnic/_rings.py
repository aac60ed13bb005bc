"""Shared-memory rings on the client side (native/include/rnic_abi.h, through rnicd.native).

A ring arrives as a memfd in a create_* reply; it is mapped shared read-write, its header
is checked (the client writes entries at offsets computed from it), and it is accessed
through rnicd.native.RingView with acquire/release index loads and stores.
"""
import errno
import mmap
import os

from rnicd.wire.rings import ABI_VERSION, RING_HDR_SIZE, RING_MAGIC, entry_bytes

from .errors import RnicError, einval

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
_MAX_RING_BYTES = 1 << 31
_native = None


def native():
    """The rnicd.native facade (imported on first use, so WR/attr objects work without it)."""
    global _native
    if _native is None:
        try:
            from rnicd import native as mod
        except ImportError as exc:
            raise RnicError(errno.ENOSYS, f"rnicd's native module is unavailable ({exc}); "
                            "build it with `make native`") from None
        _native = mod
    return _native


def uint(v, bits: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << bits):
        raise einval(f"{what} must be an integer in 0..{(1 << bits) - 1}, got {v!r}")
    return v


class Ring:
    """A mapped ring: ``rv`` (RingView), ``hdr``, ``num_entries``, ``entry_size``."""

    def __init__(self, fd: int, size, kind: int, what: str, place=None):
        """``place``: a parent domain's allocator (ParentDomain._placement): the ring is
        mapped over the memory it returns instead of where the kernel chooses."""
        self.mm, self._placed = None, None
        try:
            if isinstance(size, bool) or not isinstance(size, int) \
                    or not RING_HDR_SIZE <= size <= _MAX_RING_BYTES:
                raise RnicError(errno.EPROTO, f"{what}: ring size {size!r} from rnicd is invalid")
            if os.fstat(fd).st_size < size:   # touching pages past EOF would SIGBUS
                raise RnicError(errno.EPROTO, f"{what}: ring size {size} from rnicd exceeds "
                                f"its memfd ({os.fstat(fd).st_size} bytes)")
            if place is not None:
                self._placed = place.map(fd, size, kind, what)
            if self._placed is not None:
                self.mm = self._placed.buffer
            else:
                self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if isinstance(exc, RnicError):
                raise
            raise RnicError(exc.errno or errno.EIO, f"{what}: mapping the ring failed: {exc}"
                            ) from None
        finally:
            os.close(fd)
        self.what = what
        self.rv = None
        self.hdr = self._polling = None
        try:
            n = native()
            try:
                self.rv = n.RingView(self.mm)
            except ValueError as exc:
                raise RnicError(errno.EPROTO, f"{what}: the ring from rnicd is invalid: {exc}"
                                ) from None
            self._check(n, kind, size)
        except BaseException:
            self.release()
            raise
        self.hdr = self.rv.hdr
        self.num_entries = self.rv.num_entries
        self.entry_size = self.rv.entry_size
        self.limit = self.num_entries   # QP/SRQ lower it to the max_wr rnicd granted
        self._polling = n.ffi.addressof(self.hdr, "polling")
        self._fetch_add = n.lib.rnic_fetch_add

    def _check(self, n, kind: int, size: int) -> None:
        h = self.rv.hdr
        magic = n.lib.rnic_load_acquire(n.ffi.addressof(h, "magic"))
        es, cnt = h.entry_size, h.num_entries
        # Line 0 is written once by the daemon: read it once and keep the values.
        self.max_sge, self.max_inline = max_sge, max_inline = h.max_sge, h.max_inline
        bad = None
        if magic != RING_MAGIC:
            bad = f"magic {magic:#x}"
        elif h.abi_version != ABI_VERSION:
            bad = f"ABI version {h.abi_version}, this client speaks {ABI_VERSION}"
        elif h.kind != kind:
            bad = f"kind {h.kind}, expected {kind}"
        elif cnt == 0 or cnt & (cnt - 1) or es == 0 or es % 16:
            bad = f"geometry {cnt} x {es} bytes"
        elif RING_HDR_SIZE + es * cnt > size:
            bad = f"{cnt} x {es} bytes do not fit in {size} bytes"
        else:
            need = entry_bytes(kind, max_sge, max_inline)
            if need > es:
                bad = f"entries of {es} bytes cannot hold {need}"
        if bad:
            raise RnicError(errno.EPROTO, f"{self.what}: the ring from rnicd is invalid: {bad}")

    def used(self, prod: int) -> int:
        """Entries between cons and prod; raises if the indices are impossible."""
        used = (prod - self.rv.load_cons()) & U32
        if used > self.num_entries:
            raise RnicError(errno.EIO, f"{self.what}: ring indices are corrupt "
                            f"(prod - cons = {used} > {self.num_entries})")
        return used

    def polling(self) -> bool:
        # a full barrier with the read (an atomic add of 0): the index just stored must be
        # visible before the flag is read, as the engine clears it and looks once more
        return bool(self._fetch_add(self._polling, 0))

    def error(self) -> int:
        return self.hdr.error

    def release(self) -> None:
        """Unmap (idempotent). Every pointer into the mapping is dropped first."""
        self.hdr = self._polling = None
        if self.rv is not None:
            try:
                self.rv.release()
            except Exception:
                pass
            self.rv = None
        if self._placed is not None:
            placed, self._placed, self.mm = self._placed, None, None
            placed.unmap()                  # the allocator's memory, given back to it
        elif self.mm is not None:
            try:
                self.mm.close()
            except (BufferError, ValueError):
                pass   # a cdata view still exists; the mapping goes when it is collected
            self.mm = None

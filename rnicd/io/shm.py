"""Shared memory and eventfds for the api layer: queue rings the daemon creates (memfds it
hands to the client) and memory regions the client registers (memfds it hands to us)."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import logging
import mmap
import os

from rnicd import native
from rnicd.errors import VerbsError, einval

log = logging.getLogger("rnicd.shm")

SEALS_RING = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_MAP_FIXED = 0x10


def _address(mm: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def _map_segments(fds, segments, total) -> mmap.mmap:
    """One contiguous mapping of several memfd pieces: reserve the range as an anonymous
    mmap object (which owns it and unmaps all of it on close), then map each piece over its
    place with MAP_FIXED."""
    mm = mmap.mmap(-1, total, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                   mmap.PROT_READ | mmap.PROT_WRITE)
    base, pos = _address(mm), 0
    for i, off, n in segments:
        p = _libc.mmap(base + pos, n, mmap.PROT_READ | mmap.PROT_WRITE,
                       mmap.MAP_SHARED | _MAP_FIXED, fds[i], off)
        if p != base + pos:
            err = ctypes.get_errno()
            mm.close()
            raise OSError(err, os.strerror(err))
        pos += n
    return mm


class NoMirror:
    """What SharedMemory tells the engines (io/engines.py) when there are none."""

    def map(self, addr: int, length: int, fd: int, offset: int) -> None:
        pass

    def unmap(self, addr: int, length: int) -> None:
        pass

    def add_fd(self, fd: int, doorbell: int | None) -> None:
        pass

    def forget_fd(self, fd: int) -> None:
        pass


class SharedMemory:
    def __init__(self):
        self._maps: dict[int, mmap.mmap] = {}   # id(RingView) -> its mapping
        self.open_fds = 0
        self.mapped_bytes = 0
        self.sessions: list = []                # set by the daemon, for object_counts()
        # the engines map what we map, at the same address, before the data plane may
        # follow a pointer into it; they hold the eventfds they signal or wait on
        self.mirror = NoMirror()
        self._mirrored: dict[int, int] = {}     # address of a mapping -> its length

    # ---- eventfds ------------------------------------------------------------------------
    def new_eventfd(self, doorbell: int | None = None) -> int:
        """Non-blocking, and it stays so: the flag is shared with the client through
        SCM_RIGHTS, and a client that wrote the counter near its maximum must not be able to
        block the daemon's next write (the client libraries wait with poll/epoll). Every
        engine gets it: engine ``doorbell``'s doorbell to wait on, else a completion channel
        to signal."""
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.open_fds += 1
        try:
            self.mirror.add_fd(fd, doorbell)
        except OSError:
            self.close_fd(fd)
            raise
        return fd

    def close_fd(self, fd: int):
        if fd >= 0:
            self.mirror.forget_fd(fd)
            os.close(fd)
            self.open_fds -= 1

    def _mirror(self, mm: mmap.mmap, pieces) -> None:
        """Map pieces (address, length, fd, offset) of mm in the engines too."""
        try:
            for addr, length, fd, off in pieces:
                self.mirror.map(addr, length, fd, off)
        except OSError as exc:
            self.mirror.unmap(_address(mm), len(mm))
            mm.close()
            raise VerbsError(exc.errno or errno.EIO, f"an engine could not map: {exc}") from None
        self._mirrored[_address(mm)] = len(mm)

    def _unmirror(self, mm: mmap.mmap) -> None:
        addr = _address(mm)
        length = self._mirrored.pop(addr, None)
        if length is not None:
            self.mirror.unmap(addr, length)

    # ---- rings ---------------------------------------------------------------------------
    def new_ring(self, kind, entry_size, n, max_sge, max_inline):
        """-> (RingView, fd for the client, size). The caller sends fd, then closes it."""
        size = native.ring_bytes(entry_size, n)
        fd = os.memfd_create("rnicd-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS_RING)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        native.ring_init(mm, kind, entry_size, n, max_sge, max_inline)
        try:
            self._mirror(mm, [(_address(mm), size, fd, 0)])
        except VerbsError:
            os.close(fd)
            raise
        ring = native.RingView(mm)
        self._maps[id(ring)] = mm
        self.mapped_bytes += size
        self.open_fds += 1          # until the control server has sent and closed it
        return ring, fd, size

    def release_ring(self, ring: native.RingView):
        mm = self._maps.pop(id(ring), None)
        ring.release()
        if mm is not None:
            self.mapped_bytes -= len(mm)
            self._unmirror(mm)
            mm.close()

    # ---- memory regions ------------------------------------------------------------------
    def map_region(self, fds: list[int], segments: list[tuple[int, int, int]]) -> mmap.mmap:
        """Map a client's memory: ``segments`` (fd index, offset, bytes), page-aligned,
        placed one after the other in one mapping (docs/memory-registration.md). Each memfd
        must be sealed against shrinking, or the client could truncate it under us and turn
        our next access into SIGBUS. The api layer has checked the numbers' shapes."""
        for i in sorted({s[0] for s in segments}):
            fd = fds[i]
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                raise einval(f"reg_mr: fd #{i} is not a memfd (F_GET_SEALS failed)") from None
            if not seals & fcntl.F_SEAL_SHRINK:
                raise einval(f"reg_mr: memfd #{i} must be sealed with F_SEAL_SHRINK")
        for i, off, n in segments:
            size = os.fstat(fds[i]).st_size
            if off + n > size:
                raise einval(f"reg_mr: segment [{off}, {off + n}) is not inside the "
                             f"{size}-byte memfd #{i}")
        total = sum(n for _, _, n in segments)
        try:
            if len(segments) == 1:
                i, off, n = segments[0]
                mm = mmap.mmap(fds[i], n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=off)
            else:
                mm = _map_segments(fds, segments, total)
        except OSError as exc:
            raise VerbsError(exc.errno or errno.ENOMEM, f"reg_mr: mmap failed: {exc}") from None
        base, pieces = _address(mm), []
        for i, off, n in segments:
            pieces.append((base, n, fds[i], off))
            base += n
        self._mirror(mm, pieces)
        self.mapped_bytes += total
        return mm

    def unmap(self, mm: mmap.mmap):
        self.mapped_bytes -= len(mm)
        self._unmirror(mm)
        try:
            mm.close()          # also closes the fd mmap keeps
        except BufferError:
            gc.collect()        # a view may live on in a reference cycle: collect, retry
            try:
                mm.close()
            except BufferError:
                log.warning("a region is still referenced; it stays mapped until released")

    def file_identity(self, fd: int):
        """(st_dev, st_ino) of a file a client passed: what names an XRC domain (as the
        kernel keys ibv_open_xrcd by inode)."""
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise VerbsError(errno.EBADF, f"open_xrcd: fstat of the fd failed: {exc}") from None
        return st.st_dev, st.st_ino

    def object_counts(self) -> dict:
        c = {"contexts": len(self.sessions), "pds": 0, "mrs": 0, "cqs": 0, "qps": 0,
             "srqs": 0, "channels": 0}
        for s in self.sessions:
            for k in ("pds", "mrs", "cqs", "qps", "srqs", "channels"):
                c[k] += len(getattr(s, k))
        c["mapped_bytes"] = self.mapped_bytes
        c["open_fds"] = self.open_fds
        return c

"""Shared memory and eventfds for the api layer: queue rings the daemon creates (memfds it
hands to the client) and memory regions the client registers (memfds it hands to us)."""
from __future__ import annotations

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


class SharedMemory:
    def __init__(self):
        self._maps: dict[int, mmap.mmap] = {}   # id(RingView) -> its mapping
        self.open_fds = 0
        self.mapped_bytes = 0
        self.sessions: list = []                # set by the daemon, for object_counts()

    # ---- eventfds ------------------------------------------------------------------------
    def new_eventfd(self) -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.open_fds += 1
        return fd

    def close_fd(self, fd: int):
        if fd >= 0:
            os.close(fd)
            self.open_fds -= 1

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
            mm.close()

    # ---- memory regions ------------------------------------------------------------------
    def map_region(self, fd: int, offset: int, length: int) -> mmap.mmap:
        """Map a client's memfd. It must be sealed against shrinking, or the client could
        truncate it under us and turn our next access into SIGBUS."""
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            raise einval("reg_mr: the fd is not a memfd (F_GET_SEALS failed)") from None
        if not seals & fcntl.F_SEAL_SHRINK:
            raise einval("reg_mr: the memfd must be sealed with F_SEAL_SHRINK")
        size = os.fstat(fd).st_size
        if offset % mmap.PAGESIZE or offset + length > size:
            raise einval(f"reg_mr: [{offset}, {offset + length}) is not inside the "
                         f"{size}-byte memfd, or offset is not page aligned")
        try:
            mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                           offset=offset)
        except OSError as exc:
            raise VerbsError(exc.errno or errno.ENOMEM, f"reg_mr: mmap failed: {exc}") from None
        self.mapped_bytes += length
        return mm

    def unmap(self, mm: mmap.mmap):
        self.mapped_bytes -= len(mm)
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

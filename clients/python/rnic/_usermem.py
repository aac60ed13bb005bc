"""Registering ordinary process memory (``MR(pd, length, access, address=addr)``).

The daemon can only reach memory it can map, so the pages of a registration are moved into
memfds first: for each run of pages that no live registration covers yet, a memfd of that
size is created, the pages' current contents are copied into it, and the memfd is mapped
MAP_SHARED at the very same address with the pages' own protection (one ``mremap``). The
application keeps its pointers; bytes on the first and last page outside the MR are copied
too, so they stay intact. The daemon then maps the same memfds (reg_mr with ``segments``).
This is the ABI described in docs/memory-registration.md; the C library does the same.

Rules (each one documented there):
- A per-process registry of *spans* (memfd-backed page runs) is kept; a registration over
  pages already in a span reuses that span's memfd (two MRs on one page share its bytes).
- Unmapped pages answer EFAULT, pages without read permission EFAULT, read-only pages with
  a write access flag EFAULT (what ibv_reg_mr's pinning answers); shared mappings that are
  not rnic's, hugetlb memory and special mappings ([vvar], devices) EOPNOTSUPP.
- When the last registration of a span goes away, its pages become private anonymous memory
  again (contents copied back, one ``mremap``) unless the application has unmapped or
  replaced them meanwhile; the memfd is closed.
- In a fork child every span is made private at once (``os.register_at_fork``), so the child
  gets a copy of registered memory, as on kernels with copy-on-fork for pinned pages
  (IBV_FORK_UNNEEDED).
- A write by another thread to a span's pages while it is being moved (reg_mr) or moved back
  (last dereg) can be lost: pages are copied, then switched.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap as _mmap
import os
import threading

from .errors import RnicError

PAGE = _mmap.PAGESIZE
MEMFD_NAME = "rnic-mr"
MAX_SEGMENTS = 15          # fds in one reg_mr message (ctl.MAX_FDS is 16)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
_PROT = {"r": _mmap.PROT_READ, "w": _mmap.PROT_WRITE, "x": _mmap.PROT_EXEC}


def _oserr(what: str) -> RnicError:
    err = ctypes.get_errno() or errno.ENOMEM
    return RnicError(err, f"{what}: {os.strerror(err)}")


def _sys_mmap(addr, length, prot, flags, fd=-1, offset=0) -> int:
    p = _libc.mmap(addr, length, prot, flags, fd, offset)
    if p is None or p == _MAP_FAILED:
        raise _oserr("mmap")
    return p


def _sys_mremap_fixed(src: int, length: int, dst: int) -> None:
    p = _libc.mremap(src, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
    if p is None or p == _MAP_FAILED:
        raise _oserr("mremap")


def _sys_mprotect(addr: int, length: int, prot: int) -> None:
    if _libc.mprotect(addr, length, prot) != 0:
        raise _oserr("mprotect")


# ---- /proc/self/maps ----------------------------------------------------------------------
class Vma:
    __slots__ = ("start", "end", "perms", "offset", "inode", "path")

    def __init__(self, start, end, perms, offset, inode, path):
        self.start, self.end, self.perms = start, end, perms
        self.offset, self.inode, self.path = offset, inode, path

    @property
    def prot(self) -> int:
        return sum(v for k, v in _PROT.items() if k in self.perms)

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


def parse_maps(text: str) -> list[Vma]:
    """/proc/<pid>/maps lines -> Vmas in address order."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        out.append(Vma(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), int(parts[4]),
                       parts[5].strip() if len(parts) > 5 else ""))
    return out


def read_maps() -> list[Vma]:
    with open("/proc/self/maps") as f:
        return parse_maps(f.read())


def covering(vmas: list[Vma], lo: int, hi: int) -> list[Vma] | None:
    """The Vmas that cover [lo, hi) without a hole, or None when a byte is unmapped."""
    got, cur = [], lo
    for v in vmas:
        if v.end <= cur:
            continue
        if v.start > cur:
            return None
        got.append(v)
        cur = v.end
        if cur >= hi:
            return got
    return None


def unsupported_reason(v: Vma) -> str | None:
    """Why the pages of this mapping cannot be moved into a memfd (None: they can)."""
    p = v.path
    if "anon_hugepage" in p or "/hugepages" in p:
        return f"hugetlb memory ({p}) is not supported yet"
    if v.shared and not p.startswith(f"/memfd:{MEMFD_NAME}"):
        return (f"memory of a shared mapping ({p or 'anonymous'}) cannot be registered: "
                "rnicd moves private memory into a memfd it shares; register private memory "
                "or the MR's own memory (MR(pd, length))")
    if p.startswith("[") and p not in ("[heap]", "[stack]") and not p.startswith("[anon:"):
        return f"the special mapping {p} cannot be registered"
    if p.startswith("/dev/") and not p.startswith("/dev/zero"):
        return f"device memory ({p}) cannot be registered"
    return None


# ---- spans --------------------------------------------------------------------------------
class Span:
    """A run of pages [start, end) of this process backed by memfd ``fd`` (offset 0 at
    ``start``); ``refs`` registrations use it; ``owned``: the MR's own memory (unmapped by
    its MR, never moved back)."""

    __slots__ = ("start", "end", "fd", "inode", "refs", "owned")

    def __init__(self, start, end, fd, owned=False):
        self.start, self.end, self.fd, self.owned = start, end, fd, owned
        self.inode = os.fstat(fd).st_ino
        self.refs = 0

    def intact(self, vmas: list[Vma]) -> bool:
        """Are all its pages still mapped from its memfd, in place?"""
        cov = covering(vmas, self.start, self.end)
        return cov is not None and all(
            v.inode == self.inode and v.offset == v.start - self.start
            for v in cov)

    def close_fd(self):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Pin:
    """One registration's hold on its spans: what reg_mr sends (``segments`` over
    ``fds``, ``start``: the byte offset of the address within them)."""

    def __init__(self, segments, spans, start):
        self.segments = segments          # [(span, offset in its memfd, bytes)]
        self.spans = spans                # distinct spans, each holding one ref
        self.start = start

    def fds(self) -> list[int]:
        return [s.fd for s in self.spans]

    def wire_segments(self) -> list[list[int]]:
        idx = {id(s): i for i, s in enumerate(self.spans)}
        return [[idx[id(s)], off, n] for s, off, n in self.segments]


_lock = threading.RLock()
_spans: list[Span] = []


def _new_memfd(size: int) -> int:
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    except OSError:
        os.close(fd)
        raise
    return fd


def own_memory(fd: int, addr: int, size: int) -> Span:
    """Record an MR's own memfd mapping (already at ``addr``) as a span."""
    with _lock:
        span = Span(addr, addr + size, os.dup(fd), owned=True)
        _spans.append(span)
        return span


def _move_into_memfd(lo: int, hi: int, vmas: list[Vma]) -> Span:
    """Copy pages [lo, hi) into a new memfd and map it over them (same address, same
    protection per mapping)."""
    size = hi - lo
    fd = _new_memfd(size)
    try:
        tmp = _sys_mmap(None, size, _mmap.PROT_READ | _mmap.PROT_WRITE, _mmap.MAP_SHARED, fd)
        try:
            ctypes.memmove(tmp, lo, size)
            _sys_mremap_fixed(tmp, size, lo)      # atomically replaces [lo, hi)
        except BaseException:
            _libc.munmap(tmp, size)
            raise
        for v in vmas:                             # keep each mapping's protection
            a, b = max(v.start, lo), min(v.end, hi)
            if v.prot != _mmap.PROT_READ | _mmap.PROT_WRITE:
                _sys_mprotect(a, b - a, v.prot)
        return Span(lo, hi, fd)
    except BaseException:
        os.close(fd)
        raise


def _move_back(span: Span, vmas: list[Vma]) -> None:
    """Make a span's pages private anonymous memory again (same contents, protection)."""
    cov = covering(vmas, span.start, span.end)
    if cov is None or not span.intact(vmas) or any("r" not in v.perms for v in cov):
        return          # unmapped or replaced by the application: nothing to restore
    size = span.end - span.start
    try:
        tmp = _sys_mmap(None, size, _mmap.PROT_READ | _mmap.PROT_WRITE,
                        _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS)
    except RnicError:
        return          # no memory for the copy: the pages stay memfd-backed (still valid)
    ctypes.memmove(tmp, span.start, size)
    try:
        _sys_mremap_fixed(tmp, size, span.start)
    except RnicError:
        _libc.munmap(tmp, size)
        return
    for v in cov:
        a, b = max(v.start, span.start), min(v.end, span.end)
        if v.prot != _mmap.PROT_READ | _mmap.PROT_WRITE:
            _libc.mprotect(a, b - a, v.prot)


def pin(addr: int, length: int, writable: bool) -> Pin:
    """Make [addr, addr+length) shareable with the daemon; -> a Pin holding its spans.
    RnicError EINVAL/EFAULT/EOPNOTSUPP/E2BIG/ENOMEM as documented above."""
    for name, v in (("address", addr), ("length", length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise RnicError(errno.EINVAL, f"MR {name} must be a non-negative integer, got {v!r}")
    if length == 0:
        raise RnicError(errno.EINVAL, "MR length must be positive")
    if addr + length > 1 << 47:
        raise RnicError(errno.EFAULT, f"[{addr:#x}, +{length}) is not a user address range")
    lo = addr & ~(PAGE - 1)
    hi = (addr + length + PAGE - 1) & ~(PAGE - 1)
    with _lock:
        vmas = read_maps()
        cov = covering(vmas, lo, hi)
        if cov is None:
            raise RnicError(errno.EFAULT, f"[{addr:#x}, {addr + length:#x}) is not all mapped "
                            "memory of this process")
        for v in cov:
            if "r" not in v.perms or (writable and "w" not in v.perms):
                need = "read and write" if writable else "read"
                raise RnicError(errno.EFAULT, f"pages [{v.start:#x}, {v.end:#x}) are "
                                f"{v.perms[:3]}; the access flags need {need} permission")
        _drop_stale(vmas)
        segments, spans, cur = [], [], lo
        try:
            while cur < hi:
                span = next((s for s in _spans if s.start <= cur < s.end), None)
                if span is None:
                    gap_end = min([s.start for s in _spans if cur < s.start < hi] + [hi])
                    piece = [v for v in cov if v.start < gap_end and v.end > cur]
                    for v in piece:
                        why = unsupported_reason(v)
                        if why:
                            raise RnicError(errno.EOPNOTSUPP, why)
                    span = _move_into_memfd(cur, gap_end, piece)
                    _spans.append(span)
                end = min(span.end, hi)
                segments.append((span, cur - span.start, end - cur))
                if span not in spans:
                    spans.append(span)
                    span.refs += 1
                if len(spans) > MAX_SEGMENTS:
                    raise RnicError(errno.E2BIG, f"the range spans more than {MAX_SEGMENTS} "
                                    "separately registered pieces of memory; register it "
                                    "before the overlapping smaller regions")
                cur = end
        except BaseException:
            _unref(spans, None)     # spans moved just now go back too
            raise
        return Pin(segments, spans, addr - lo)


def _drop_stale(vmas: list[Vma]) -> None:
    """Forget spans whose pages the application unmapped or replaced (free, munmap)."""
    for s in list(_spans):
        if not s.intact(vmas):
            _spans.remove(s)
            if s.refs == 0:
                s.close_fd()


def _unref(spans: list[Span], vmas: list[Vma] | None) -> None:
    for s in spans:
        s.refs -= 1
        if s.refs > 0:
            continue
        if s in _spans:
            _spans.remove(s)
            if not s.owned:
                _move_back(s, vmas if vmas is not None else read_maps())
        s.close_fd()


def unpin(p: Pin | None) -> None:
    """Release a registration's spans (after the daemon let go of the MR)."""
    if p is None:
        return
    with _lock:
        spans, p.spans = p.spans, []
        if spans:
            _unref(spans, None)


def spans() -> list[tuple[int, int, int]]:
    """(start, end, refs) of the live spans (for tests and `rnic` diagnostics)."""
    with _lock:
        return [(s.start, s.end, s.refs) for s in _spans]


def _after_fork_in_child() -> None:
    """The child gets a private copy of every registered page (copy-on-fork)."""
    global _lock
    _lock = threading.RLock()
    try:
        vmas = read_maps()
    except OSError:
        vmas = []
    for s in _spans:
        _move_back(s, vmas)
        s.close_fd()
    _spans.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

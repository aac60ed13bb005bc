"""pyverbs.mem_alloc: ordinary process memory by address (libc through ctypes).

Addresses are plain ints, as in pyverbs, and the functions have pyverbs' signatures and
errors (MemoryError when libc fails, offsets of read32/64 and writebe32/64 in units of the
value's size). Such memory can be registered: ``MR(pd, length, access, address=addr)``
(docs/memory-registration.md).
"""
import ctypes
import mmap as _mmap

from .base import PyverbsRDMAErrno

_libc = ctypes.CDLL(None, use_errno=True)
_libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                 ctypes.c_size_t]
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

MAP_ANONYMOUS_ = _mmap.MAP_ANONYMOUS
MAP_PRIVATE_ = _mmap.MAP_PRIVATE
MAP_SHARED_ = _mmap.MAP_SHARED
MAP_FIXED_ = 0x10
MAP_GROWSDOWN_ = 0x100
MAP_LOCKED_ = 0x2000
MAP_NORESERVE_ = 0x4000
MAP_POPULATE_ = 0x8000
MAP_STACK_ = 0x20000
MAP_HUGETLB_ = 0x40000
PROT_NONE_ = _mmap.PROT_NONE if hasattr(_mmap, "PROT_NONE") else 0
PROT_READ_ = _mmap.PROT_READ
PROT_WRITE_ = _mmap.PROT_WRITE
PROT_EXEC_ = _mmap.PROT_EXEC
MADV_DONTNEED = 4
_MAP_FAILED = ctypes.c_void_p(-1).value


def mmap(addr=0, length=100, prot=PROT_READ_ | PROT_WRITE_,
         flags=MAP_PRIVATE_ | MAP_ANONYMOUS_, fd=0, offset=0) -> int:
    """mmap(2); returns the address. MemoryError when it fails."""
    res = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if res is None or res == _MAP_FAILED:
        raise MemoryError("Failed to mmap memory")
    return res


def madvise(addr, length, flags=MADV_DONTNEED) -> None:
    if _libc.madvise(addr, length, flags):
        raise PyverbsRDMAErrno("Failed to madvise memory")


def munmap(addr, length) -> None:
    if _libc.munmap(addr, length) != 0:
        raise MemoryError("Failed to munmap requested memory")


def malloc(size) -> int:
    addr = _libc.malloc(size)
    if not addr:
        raise MemoryError("Failed to allocate memory")
    return addr


def posix_memalign(size, alignment=8) -> int:
    """Zeroed memory aligned to ``alignment``; returns its address."""
    p = ctypes.c_void_p()
    if _libc.posix_memalign(ctypes.byref(p), alignment, size) != 0:
        raise MemoryError("Failed to allocate memory")
    ctypes.memset(p.value, 0, size)
    return p.value


def free(ptr) -> None:
    _libc.free(ptr)


def writebe32(addr, val, offset=0) -> None:
    """``val`` big-endian at 32-bit word ``offset`` of ``addr``."""
    ctypes.memmove(addr + 4 * offset, int(val).to_bytes(4, "big"), 4)


def writebe64(addr, val, offset=0) -> None:
    """``val`` big-endian at 64-bit word ``offset`` of ``addr``."""
    ctypes.memmove(addr + 8 * offset, int(val).to_bytes(8, "big"), 8)


def write(addr, data, length, offset=0) -> None:
    """Copy ``length`` bytes of ``data`` (bytes or str) to ``addr + offset``."""
    if isinstance(data, str):
        data = data.encode()
    data = bytes(data)
    if length > len(data):
        raise ValueError(f"write: length {length} exceeds the {len(data)} bytes of data")
    ctypes.memmove(addr + offset, data, length)


def read32(addr, offset=0) -> int:
    return ctypes.c_uint32.from_address(addr + 4 * offset).value


def read64(addr, offset=0) -> int:
    return ctypes.c_uint64.from_address(addr + 8 * offset).value


def read(addr, length, offset=0) -> bytes:
    return ctypes.string_at(addr + offset, length)

"""pyverbs.mem_alloc: ordinary process memory by address (libc through ctypes).

Addresses are plain ints, as in pyverbs. Note: rnicd registers memory it can share with
the process (memfd); an MR over memory from here needs MRs on ordinary process memory, which
rnicd does not offer yet (reg_mr with an address answers EOPNOTSUPP).
"""
import ctypes
import mmap as _mmap
import os

from .pyverbs_error import PyverbsRDMAError

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
_MAP_FAILED = ctypes.c_void_p(-1).value


def posix_memalign(size: int, alignment: int = 8) -> int:
    """Zeroed memory aligned to ``alignment``; returns its address."""
    p = ctypes.c_void_p()
    rc = _libc.posix_memalign(ctypes.byref(p), alignment, size)
    if rc != 0:
        raise PyverbsRDMAError("Failed to allocate memory", rc)
    ctypes.memset(p.value, 0, size)
    return p.value


def malloc(size: int) -> int:
    addr = _libc.malloc(size)
    if not addr:
        raise PyverbsRDMAError("Failed to allocate memory", ctypes.get_errno())
    return addr


def free(ptr: int) -> None:
    _libc.free(ptr)


def mmap(addr=0, length=0, prot=PROT_READ_ | PROT_WRITE_,
         flags=MAP_PRIVATE_ | MAP_ANONYMOUS_, fd=-1, offset=0) -> int:
    res = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if res is None or res == _MAP_FAILED:
        err = ctypes.get_errno()
        raise PyverbsRDMAError(f"Failed to mmap memory: {os.strerror(err)}", err)
    return res


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        raise PyverbsRDMAError("Failed to munmap memory", ctypes.get_errno())


def read(addr: int, length: int, offset: int = 0) -> bytes:
    return ctypes.string_at(addr + offset, length)


def write(addr: int, data, length: int, offset: int = 0) -> None:
    if isinstance(data, str):
        data = data.encode()
    ctypes.memmove(addr + offset, bytes(data[:length]), min(length, len(data)))


def read32(addr: int) -> int:
    return ctypes.c_uint32.from_address(addr).value


def read64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def writebe32(addr: int, val: int, offset: int = 0) -> None:
    ctypes.memmove(addr + offset, val.to_bytes(4, "big"), 4)


def writebe64(addr: int, val: int, offset: int = 0) -> None:
    ctypes.memmove(addr + offset, val.to_bytes(8, "big"), 8)

"""Facade of the C data plane ``rnicd._native`` (native/): the only module that imports it.

Buffers are any writable/readable contiguous buffer (bytes, bytearray, mmap, memoryview).
Wrapping a buffer costs an ``ffi.from_buffer`` per call; on a hot path wrap a region once
with :func:`region` and pass the result instead. Errors from C (-errno) raise ``OSError``.
"""
import errno
import functools
import os
import socket
import struct

from rnicd._native import ffi, lib

__all__ = [
    "ffi", "lib", "region", "crc32", "crc32c", "roce_icrc", "icrc_bytes", "ring_bytes",
    "ring_init", "RingView", "shared_new", "copy_in",
    "copy_out", "ipv4_be",
]

BTH_LEN = 12  # IBTA 9.2: the ICRC covers at least a whole BTH
ICRC_LEN = 4
_PSEUDO_HDRS = 20 + 8  # IPv4 + UDP headers counted in the IP total length (Annex A17.3.3)
_MAX_PKT = 0xFFFF - _PSEUDO_HDRS - ICRC_LEN


# ffi.new for the data plane's records: the same, but in the state arena (native/src/arena.c),
# which the engine processes share, so every record has one copy at one address.
shared_new = ffi.new_allocator(alloc=lib.rnic_arena_alloc, free=lib.rnic_arena_free,
                               should_clear_after_alloc=False)     # it comes zeroed


def region(buf, writable: bool = True):
    """Wrap a buffer once as ``uint8_t[]`` cdata (``len()`` works); pass it to the functions
    below instead of the buffer to skip the per-call wrapping. ``ffi.release`` it before
    closing an mmap."""
    return ffi.from_buffer("uint8_t[]", buf, require_writable=writable)


def _cdata(buf, writable: bool = False):
    if isinstance(buf, ffi.CData) or (not writable and type(buf) is bytes):
        return buf  # cffi passes bytes to a const uint8_t * without copying
    return ffi.from_buffer("uint8_t[]", buf, require_writable=writable)


def _check(rc: int) -> int:
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


def crc32(data, crc: int = 0) -> int:
    """CRC-32 of data, continuing from crc: equal to ``zlib.crc32(data, crc)``."""
    p = _cdata(data)
    return lib.rnic_crc32(crc & 0xFFFFFFFF, p, len(p))


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C (Castagnoli; the MPA CRC of RFC 5044), same conventions as :func:`crc32`."""
    p = _cdata(data)
    return lib.rnic_crc32c(crc & 0xFFFFFFFF, p, len(p))


@functools.lru_cache(maxsize=4096)
def ipv4_be(ip: str) -> int:
    """The address as the uint32 whose memory holds the network-order bytes."""
    return struct.unpack("=I", socket.inet_pton(socket.AF_INET, ip))[0]


def roce_icrc(pkt, src_ip: str, dst_ip: str, sport: int, dport: int) -> int:
    """RoCEv2 ICRC (IBTA Annex A17.3.3) of pkt = BTH .. pad (without the ICRC) carried in
    IPv4 src_ip -> dst_ip (ID 0, DF) and UDP sport -> dport. Put it on the wire with
    :func:`icrc_bytes`."""
    p = _cdata(pkt)
    if not BTH_LEN <= len(p) <= _MAX_PKT:
        raise ValueError(f"RoCE packet of {len(p)} bytes: need {BTH_LEN}..{_MAX_PKT}")
    return lib.rnic_roce_icrc_v4(p, len(p), ipv4_be(src_ip), ipv4_be(dst_ip), sport, dport)


def roce_icrc_ok(datagram, src_ip: str, dst_ip: str, sport: int, dport: int,
                 ip_id: int = 0) -> bool:
    """The ICRC ending a received datagram (BTH .. ICRC) matches, for IPv4 ID 0, ip_id (its
    index in a GRO batch) or the IDs of GSO segments (rnic_roce_icrc_check_v4)."""
    p = _cdata(datagram)
    return bool(lib.rnic_roce_icrc_check_v4(p, len(p), ipv4_be(src_ip), ipv4_be(dst_ip), sport,
                                            dport, ip_id))


def icrc_bytes(value: int) -> bytes:
    """The 4 wire bytes of an ICRC value: least significant byte first (as scapy's
    ``BTH.pack_icrc`` and ``lib.rnic_roce_icrc_put``)."""
    return (value & 0xFFFFFFFF).to_bytes(ICRC_LEN, "little")


def ring_bytes(entry_size: int, n: int) -> int:
    """Size of a ring mapping: 256-byte header + n entries, rounded up to 4096."""
    return lib.rnic_ring_bytes(entry_size, n)


def ring_init(buf, kind: int, entry_size: int, n: int, max_sge: int = 0,
              max_inline: int = 0) -> None:
    """Zero the ring in buf (e.g. an mmap) and write its header (kind: ``lib.RNIC_RING_*``)."""
    p = _cdata(buf, writable=True)
    try:
        _check(lib.rnic_ring_init(p, len(p), kind, entry_size, n, max_sge, max_inline))
    finally:
        if p is not buf:
            ffi.release(p)


class RingView:
    """Typed access to a ring in buf (header validated once; geometry cached, so later
    header writes by the other side cannot move entries outside buf)."""

    def __init__(self, buf):
        self._buf = region(buf)
        size = len(self._buf)
        try:
            if size < lib.RNIC_RING_HDR_SIZE:
                raise ValueError(f"ring of {size} bytes is smaller than its header")
            self.hdr = ffi.cast("struct rnic_ring_hdr *", self._buf)
            n, esz = self.hdr.num_entries, self.hdr.entry_size
            if self.hdr.magic != lib.RNIC_RING_MAGIC:
                raise ValueError(f"bad ring magic {self.hdr.magic:#x}")
            if n == 0 or n & (n - 1) or esz == 0 or esz % 16:
                raise ValueError(f"bad ring geometry: {n} entries of {esz} bytes")
            if lib.RNIC_RING_HDR_SIZE + n * esz > size:
                raise ValueError(f"{n} entries of {esz} bytes overflow a {size}-byte ring")
        except ValueError:
            self.release()
            raise
        self.num_entries, self.entry_size, self._mask = n, esz, n - 1
        self.hdr_size = lib.RNIC_RING_HDR_SIZE
        self._prod = ffi.addressof(self.hdr, "prod")
        self._cons = ffi.addressof(self.hdr, "cons")

    def offset(self, idx: int) -> int:
        """Byte offset in buf of the entry of free-running index idx."""
        return self.hdr_size + (idx & self._mask) * self.entry_size

    def entry(self, idx: int):
        """``void *`` to the entry of free-running index idx."""
        return ffi.cast("void *", self._buf + self.offset(idx))

    def send_wqe(self, idx: int):
        return ffi.cast("struct rnic_send_wqe *", self.entry(idx))

    def recv_wqe(self, idx: int):
        return ffi.cast("struct rnic_recv_wqe *", self.entry(idx))

    def cqe(self, idx: int):
        return ffi.cast("struct rnic_cqe *", self.entry(idx))

    def load_prod(self) -> int:
        return lib.rnic_load_acquire(self._prod)

    def load_cons(self) -> int:
        return lib.rnic_load_acquire(self._cons)

    def store_prod(self, v: int) -> None:
        lib.rnic_store_release(self._prod, v & 0xFFFFFFFF)

    def store_cons(self, v: int) -> None:
        lib.rnic_store_release(self._cons, v & 0xFFFFFFFF)

    def release(self) -> None:
        """Drop every pointer into buf so that it (an mmap) can be closed. Idempotent."""
        buf, self._buf = self._buf, None
        self.hdr = self._prod = self._cons = None
        if buf is not None:
            ffi.release(buf)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def copy_in(dst_buf, off: int, src) -> None:
    """Place src at dst_buf[off:]; OSError(ERANGE) if it does not fit."""
    d, s = _cdata(dst_buf, writable=True), _cdata(src)
    _check(lib.rnic_copy_in(d, len(d), off, s, len(s)))


def copy_out(src_buf, off: int, n: int) -> bytes:
    """Bytes src_buf[off:off+n]; OSError(ERANGE) if the range is outside src_buf."""
    s = _cdata(src_buf)
    if n < 0:
        raise OSError(errno.ERANGE, f"negative length {n}")
    out = ffi.new("uint8_t[]", n)
    _check(lib.rnic_copy_out(out, s, len(s), off, n))
    return ffi.buffer(out)[:]

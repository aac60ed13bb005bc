"""rnicd._native through rnicd.native, against independent oracles: zlib, a bitwise
CRC-32C, a struct-built ICRC pseudo-header, scapy's RoCE layer, real sockets."""
import errno
import importlib.util
import mmap
import os
import random
import select
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from rnicd import native
from rnicd.native import ffi, lib

ROOT = Path(__file__).resolve().parents[2]
U64 = 0xFFFFFFFFFFFFFFFF
SIZE_MAX = 2**64 - 1

CRC32_FNS = {"dispatch": lib.rnic_crc32, "sw": lib.rnic_crc32_sw}
CRC32C_FNS = {"dispatch": lib.rnic_crc32c, "sw": lib.rnic_crc32c_sw}


def _call(fn, crc, data):
    p = ffi.from_buffer("uint8_t[]", data)
    return fn(crc, p, len(p))


# ---- CRC-32 ----------------------------------------------------------------------------

def test_cpu_features_reported():
    feats = lib.rnic_cpu_features()
    assert feats & ~(lib.RNIC_CPU_PCLMUL | lib.RNIC_CPU_SSE42 | lib.RNIC_CPU_VPCLMUL) == 0
    assert not feats & lib.RNIC_CPU_VPCLMUL or feats & lib.RNIC_CPU_PCLMUL
    print(f"accelerated paths: pclmul={bool(feats & lib.RNIC_CPU_PCLMUL)} "
          f"vpclmul={bool(feats & lib.RNIC_CPU_VPCLMUL)} "
          f"sse4.2={bool(feats & lib.RNIC_CPU_SSE42)}")


@pytest.mark.parametrize("impl", sorted(CRC32_FNS))
def test_crc32_matches_zlib_all_small_lengths_and_offsets(impl):
    fn = CRC32_FNS[impl]
    rng = random.Random(1)
    blob = memoryview(rng.randbytes(300 + 16))
    for start in range(16):
        for n in range(300):
            view = blob[start:start + n]
            assert _call(fn, 0, view) == zlib.crc32(view), (start, n)


@pytest.mark.parametrize("impl", sorted(CRC32_FNS))
def test_crc32_matches_zlib_random_lengths(impl):
    fn = CRC32_FNS[impl]
    rng = random.Random(2)
    blob = memoryview(rng.randbytes(10000 + 64))
    for _ in range(400):
        n, start = rng.randrange(0, 10001), rng.randrange(0, 64)
        seed = rng.choice([0, rng.getrandbits(32)])
        view = blob[start:start + n]
        assert _call(fn, seed, view) == zlib.crc32(view, seed), (start, n, seed)


def test_crc32_chained_equals_whole():
    rng = random.Random(3)
    data = rng.randbytes(20000)
    for _ in range(50):
        cuts = sorted(rng.randrange(0, len(data)) for _ in range(rng.randrange(1, 6)))
        crc, prev = 0, 0
        for cut in cuts + [len(data)]:
            crc = native.crc32(memoryview(data)[prev:cut], crc)
            prev = cut
        assert crc == zlib.crc32(data)


def test_crc32_facade_accepts_buffers():
    data = os.urandom(5000)
    expect = zlib.crc32(data)
    assert native.crc32(data) == expect
    assert native.crc32(bytearray(data)) == expect
    assert native.crc32(memoryview(b"x" + data)[1:]) == expect
    assert native.crc32(native.region(bytearray(data))) == expect
    assert native.crc32(b"") == 0 and native.crc32(b"", 1234) == 1234
    assert native.crc32(data[:100], -1) == zlib.crc32(data[:100], 0xFFFFFFFF)


def test_crc32_large_buffer():
    data = os.urandom(3 * 1024 * 1024 + 13)
    assert native.crc32(data) == zlib.crc32(data)
    assert lib.rnic_crc32_sw(0, data, len(data)) == zlib.crc32(data)


# ---- CRC-32C ---------------------------------------------------------------------------

def crc32c_bitwise(data: bytes, crc: int = 0) -> int:
    """Reference CRC-32C, one bit at a time (reflected 0x82F63B78, RFC 3385)."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("impl", sorted(CRC32C_FNS))
def test_crc32c_known_vectors(impl):
    fn = CRC32C_FNS[impl]
    assert _call(fn, 0, b"123456789") == 0xE3069283
    # RFC 3720 appendix B.4 (iSCSI): 32 bytes of zeros, of ones, incrementing.
    assert _call(fn, 0, bytes(32)) == 0x8A9136AA
    assert _call(fn, 0, b"\xff" * 32) == 0x62A8AB43
    assert _call(fn, 0, bytes(range(32))) == 0x46DD794E
    assert _call(fn, 0, b"") == 0


@pytest.mark.parametrize("impl", sorted(CRC32C_FNS))
def test_crc32c_matches_bitwise_reference(impl):
    fn = CRC32C_FNS[impl]
    rng = random.Random(4)
    blob = memoryview(rng.randbytes(600))
    for _ in range(150):
        n, start = rng.randrange(0, 500), rng.randrange(0, 16)
        seed = rng.choice([0, rng.getrandbits(32)])
        view = blob[start:start + n]
        assert _call(fn, seed, view) == crc32c_bitwise(bytes(view), seed)


def test_crc32c_incremental_and_paths_agree():
    rng = random.Random(5)
    data = rng.randbytes(50000)
    whole = native.crc32c(data)
    assert whole == lib.rnic_crc32c_sw(0, data, len(data))
    for _ in range(30):
        cut = rng.randrange(0, len(data) + 1)
        assert native.crc32c(data[cut:], native.crc32c(data[:cut])) == whole
    assert native.crc32c(b"123456789") == 0xE3069283


# ---- RoCEv2 ICRC -----------------------------------------------------------------------

def icrc_reference(pkt: bytes, src: str, dst: str, sport: int, dport: int) -> int:
    """IBTA Annex A17.3.3 spelled out with struct: pseudo-LRH, masked IPv4/UDP/BTH."""
    total = 20 + 8 + len(pkt) + 4
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xFF, total, 0, 0x4000, 0xFF, 17, 0xFFFF,
                     socket.inet_aton(src), socket.inet_aton(dst))
    udp = struct.pack("!HHHH", sport, dport, 8 + len(pkt) + 4, 0xFFFF)
    bth = pkt[:4] + b"\xff" + pkt[5:12]
    return zlib.crc32(b"\xff" * 8 + ip + udp + bth + pkt[12:])


def test_icrc_matches_struct_reference():
    rng = random.Random(6)
    for _ in range(200):
        pkt = rng.randbytes(rng.randrange(12, 4200))
        src = socket.inet_ntoa(rng.randbytes(4))
        dst = socket.inet_ntoa(rng.randbytes(4))
        sport, dport = rng.randrange(65536), rng.choice([4791, rng.randrange(65536)])
        got = native.roce_icrc(pkt, src, dst, sport, dport)
        assert got == icrc_reference(pkt, src, dst, sport, dport)


def test_icrc_masks_only_the_variant_bth_byte():
    pkt = bytearray(os.urandom(64))
    base = native.roce_icrc(bytes(pkt), "10.0.0.1", "10.0.0.2", 49152, 4791)
    pkt[4] ^= 0xC0  # FECN, BECN
    assert native.roce_icrc(bytes(pkt), "10.0.0.1", "10.0.0.2", 49152, 4791) == base
    for i in (0, 3, 5, 11, 12, 63):
        other = bytearray(pkt)
        other[i] ^= 1
        assert native.roce_icrc(bytes(other), "10.0.0.1", "10.0.0.2", 49152, 4791) != base


def test_icrc_c_entry_points_and_wire_bytes():
    pkt = os.urandom(40)
    src, dst = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
    value = lib.rnic_roce_icrc_v4(pkt, len(pkt), struct.unpack("=I", src)[0],
                                  struct.unpack("=I", dst)[0], 1234, 4791)
    assert value == icrc_reference(pkt, "192.0.2.1", "192.0.2.2", 1234, 4791)
    out = ffi.new("uint8_t[4]")
    lib.rnic_roce_icrc_put(out, value)
    assert ffi.buffer(out)[:] == native.icrc_bytes(value) == struct.pack("<I", value)


def test_icrc_rejects_impossible_lengths():
    with pytest.raises(ValueError):
        native.roce_icrc(b"\x00" * 11, "1.1.1.1", "2.2.2.2", 1, 4791)
    with pytest.raises(ValueError):
        native.roce_icrc(b"\x00" * 65536, "1.1.1.1", "2.2.2.2", 1, 4791)
    with pytest.raises(OSError):
        native.roce_icrc(b"\x00" * 12, "1.1.1", "2.2.2.2", 1, 4791)


def _scapy():
    try:
        from scapy.contrib.roce import BTH
        from scapy.layers.inet import IP, UDP
        from scapy.packet import Raw
    except Exception as e:  # any import failure means "no oracle"
        print(f"scapy unavailable: {e!r}")
        pytest.skip(f"scapy.contrib.roce not importable: {e!r}")
    return IP, UDP, BTH, Raw


def test_icrc_matches_scapy():
    IP, UDP, BTH, Raw = _scapy()
    rng = random.Random(7)
    for i in range(40):
        src = f"10.{i}.0.1"
        dst = f"10.{i}.0.2"
        sport = rng.randrange(49152, 65536)
        payload = rng.randbytes(rng.choice([0, 4, 17, 256, 1024, 4096]))
        bth = BTH(opcode=rng.choice([0x04, 0x0A, 0x11, 0x64]), solicited=rng.randrange(2),
                  padcount=rng.randrange(4), pkey=0xFFFF, fecn=rng.randrange(2),
                  becn=rng.randrange(2), dqpn=rng.randrange(1 << 24),
                  ackreq=rng.randrange(2), psn=rng.randrange(1 << 24))
        # TOS and TTL are masked by the ICRC: vary them to show it.
        frame = (IP(src=src, dst=dst, flags="DF", id=0, tos=rng.randrange(256),
                    ttl=rng.randrange(1, 256))
                 / UDP(sport=sport, dport=4791) / bth / Raw(payload))
        wire = bytes(frame)
        roce, scapy_icrc = wire[28:-4], wire[-4:]
        value = native.roce_icrc(roce, src, dst, sport, 4791)
        assert native.icrc_bytes(value) == scapy_icrc, i
        assert value == icrc_reference(roce, src, dst, sport, 4791)


def test_icrc_of_gso_segments_matches_scapy():
    """Segment k of a UDP GSO send leaves with IPv4 Identification k: the ICRC computed for ID
    0 with rnic_roce_icrc_id_xor(len, k) folded in is scapy's ICRC of that segment with its
    real IP header; rnic_roce_icrc_check_v4 accepts it (ID 0, the hint, or a GSO ID) and
    rejects a flipped bit."""
    IP, UDP, BTH, Raw = _scapy()
    rng = random.Random(8)
    src, dst = "10.9.0.1", "10.9.0.2"
    be = [struct.unpack("=I", socket.inet_aton(a))[0] for a in (src, dst)]
    for i in range(40):
        ip_id = rng.choice([1, 2, 15, 63, rng.randrange(1, 1 << 16)])
        payload = rng.randbytes(rng.choice([0, 256, 1024, 4096]))
        frame = (IP(src=src, dst=dst, flags="DF", id=ip_id) / UDP(sport=49999, dport=4791)
                 / BTH(opcode=0x07, dqpn=rng.randrange(1 << 24), psn=rng.randrange(1 << 24))
                 / Raw(payload))
        wire = bytes(frame)[28:]
        roce = wire[:-4]
        value = native.roce_icrc(roce, src, dst, 49999, 4791)
        assert native.icrc_bytes(value ^ lib.rnic_roce_icrc_id_xor(len(roce), ip_id)) \
            == wire[-4:], i
        check = lib.rnic_roce_icrc_check_v4
        assert check(wire, len(wire), be[0], be[1], 49999, 4791, ip_id) == 1
        if ip_id < lib.RNIC_GSO_MAX_SEGS:           # what a kernel's split can number
            assert check(wire, len(wire), be[0], be[1], 49999, 4791, 0) == 1
        bad = bytearray(wire)
        bad[rng.choice([0, 5, 12, len(bad) - 5, len(bad) - 1])] ^= 1 << rng.randrange(8)
        assert check(bytes(bad), len(bad), be[0], be[1], 49999, 4791, ip_id) == 0
    assert lib.rnic_roce_icrc_id_xor(100, 0) == 0


def test_gso_send_arrives_as_one_gro_batch_with_per_segment_icrcs():
    """rnic_send_gso hands a run of equal-size datagrams to one address to the kernel as one
    send; a socket with UDP_GRO (rnic_recv_gro) gets it back as one buffer with its segment
    size, and segment k carries the ICRC of IPv4 ID k (the shorter run after it stays alone)."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    b.setsockopt(socket.IPPROTO_UDP, 104, 1)          # UDP_GRO
    port = b.getsockname()[1]
    size, n = 1040, 5
    body = [bytes([0x07, 0, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0, 0, k]) + os.urandom(size - 16)
            for k in range(n)]
    pkts = [p + native.icrc_bytes(native.roce_icrc(p, "127.0.0.1", "127.0.0.1",
                                                   a.getsockname()[1], port))
            for p in body] + [os.urandom(80)]
    bufs = ffi.new("uint8_t[]", 2048 * len(pkts))
    for i, p in enumerate(pkts):
        ffi.memmove(bufs + 2048 * i, p, len(p))
    lens = ffi.new("uint32_t[]", [len(p) for p in pkts])
    addrs = ffi.new("uint32_t[]", [struct.unpack("=I", socket.inet_aton("127.0.0.1"))[0]]
                    * len(pkts))
    assert lib.rnic_send_gso(a.fileno(), bufs, 2048, lens, len(pkts), addrs, port) == len(pkts)
    rb = ffi.new("uint8_t[]", 2 * 65536)
    rl, rs = ffi.new("uint32_t[2]"), ffi.new("uint32_t[2]")
    ra, rp = ffi.new("uint32_t[2]"), ffi.new("uint16_t[2]")
    got = 0
    for _ in range(100):
        got += max(0, lib.rnic_recv_gro(b.fileno(), rb + 65536 * got, 65536, 2 - got,
                                        rl + got, rs + got, ra + got, rp + got))
        if got == 2:
            break
        time.sleep(0.01)
    assert got == 2 and (rl[0], rs[0], rl[1], rs[1]) == (size * n, size, 80, 80)
    batch = ffi.buffer(rb, size * n)[:]
    be = struct.unpack("=I", socket.inet_aton("127.0.0.1"))[0]
    for k in range(n):
        seg = batch[k * size:(k + 1) * size]
        assert seg[:-4] == pkts[k][:-4]
        crc = native.roce_icrc(seg[:-4], "127.0.0.1", "127.0.0.1", a.getsockname()[1], port)
        assert struct.unpack("<I", seg[-4:])[0] == crc ^ lib.rnic_roce_icrc_id_xor(size - 4, k)
        assert lib.rnic_roce_icrc_check_v4(seg, size, be, be, a.getsockname()[1], port, k)
    a.close()
    b.close()


# ---- rings -----------------------------------------------------------------------------

def test_abi_layout_seen_by_cffi():
    assert ffi.sizeof("struct rnic_ring_hdr") == lib.RNIC_RING_HDR_SIZE == 256
    assert ffi.offsetof("struct rnic_ring_hdr", "prod") == 64
    assert ffi.offsetof("struct rnic_ring_hdr", "cons") == 128
    assert ffi.offsetof("struct rnic_ring_hdr", "arm") == 192
    assert ffi.sizeof("struct rnic_send_wqe") == lib.RNIC_SEND_WQE_HDR_SIZE == 64
    assert ffi.sizeof("struct rnic_recv_wqe") == lib.RNIC_RECV_WQE_HDR_SIZE == 16
    assert ffi.sizeof("struct rnic_cqe") == lib.RNIC_CQE_SIZE == 64
    assert lib.RNIC_RING_MAGIC == 0x524E4943 and lib.RNIC_RING_CQ == 4
    assert lib.RNIC_SEND_SIGNALED == 2 and lib.RNIC_MAX_BATCH == 64


def test_cdef_is_generated_from_the_header():
    spec = importlib.util.spec_from_file_location("build_ffi", ROOT / "native/build_ffi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.header_cdef(str(ROOT / "native/include/rnic_abi.h"))
    assert "/*" not in text and "#include" not in text and "#ifndef" not in text
    assert "#define RNIC_RING_MAGIC ..." in text and "struct rnic_cqe {" in text


@pytest.mark.parametrize("esz,n,expect", [(64, 1, 4096), (64, 60, 4096), (64, 61, 8192),
                                          (16, 1024, 20480), (4096, 65536, 268439552)])
def test_ring_bytes(esz, n, expect):
    assert native.ring_bytes(esz, n) == expect


@pytest.mark.parametrize("kind,esz,n,sge,inline", [
    (lib.RNIC_RING_CQ, 64, 3, 0, 0),        # not a power of two
    (lib.RNIC_RING_CQ, 64, 0, 0, 0),
    (lib.RNIC_RING_CQ, 72, 4, 0, 0),        # not a multiple of 16
    (lib.RNIC_RING_CQ, 0, 4, 0, 0),
    (lib.RNIC_RING_CQ, 32, 4, 0, 0),        # smaller than a CQE
    (lib.RNIC_RING_SQ, 128, 4, 5, 0),       # 64 + 5 * 16 > 128
    (lib.RNIC_RING_SQ, 128, 4, 4, 65),      # 64 + 65 > 128
    (lib.RNIC_RING_RQ, 64, 4, 4, 0),        # 16 + 4 * 16 > 64
    (lib.RNIC_RING_SRQ, 16, 4, 1, 0),
    (0, 64, 4, 0, 0),                       # unknown kind
    (lib.RNIC_RING_CQ, 64, 1 << 20, 0, 0),  # does not fit in the buffer
])
def test_ring_init_rejects_bad_geometry(kind, esz, n, sge, inline):
    buf = bytearray(8192)
    with pytest.raises(OSError) as exc:
        native.ring_init(buf, kind, esz, n, sge, inline)
    assert exc.value.errno == errno.EINVAL


def test_ring_init_rejects_tiny_and_misaligned_buffers():
    assert lib.rnic_ring_init(ffi.NULL, 8192, lib.RNIC_RING_CQ, 64, 4, 0, 0) == -errno.EINVAL
    buf = native.region(bytearray(8192 + 8))
    assert lib.rnic_ring_init(buf + 4, 8192, lib.RNIC_RING_CQ, 64, 4, 0, 0) == -errno.EINVAL
    assert lib.rnic_ring_init(buf, 100, lib.RNIC_RING_CQ, 64, 4, 0, 0) == -errno.EINVAL
    # Exactly header + entries fits.
    assert lib.rnic_ring_init(buf, 256 + 4 * 64, lib.RNIC_RING_CQ, 64, 4, 0, 0) == 0


def test_ring_init_header_entries_and_indices():
    size = native.ring_bytes(128, 16)
    m = mmap.mmap(-1, size)
    m.write(b"\xaa" * size)
    native.ring_init(m, lib.RNIC_RING_SQ, 128, 16, max_sge=4, max_inline=64)
    assert m[:4] == struct.pack("=I", lib.RNIC_RING_MAGIC)
    assert m[256:256 + 16 * 128] == bytes(16 * 128)  # entries zeroed
    with native.RingView(m) as ring:
        h = ring.hdr
        assert (h.magic, h.abi_version, h.kind) == (lib.RNIC_RING_MAGIC, lib.RNIC_ABI_VERSION,
                                                    lib.RNIC_RING_SQ)
        assert (h.entry_size, h.num_entries, h.max_sge, h.max_inline) == (128, 16, 4, 64)
        assert (h.prod, h.cons, h.arm, h.events, h.polling, h.error) == (0,) * 6
        assert (ring.num_entries, ring.entry_size) == (16, 128)
        base = int(ffi.cast("uintptr_t", h))
        for idx in (0, 1, 15, 16, 17, 2**32 - 1):
            addr = int(ffi.cast("uintptr_t", ring.entry(idx)))
            assert addr == base + 256 + (idx % 16) * 128
            assert addr == int(ffi.cast("uintptr_t", lib.rnic_ring_entry(h, idx)))
        wqe = ring.send_wqe(18)
        wqe.wr_id, wqe.num_sge = 0x1122334455667788, 2
        wqe.sg[1].lkey = 0xABCD
        off = 256 + 2 * 128
        assert m[off:off + 8] == struct.pack("=Q", 0x1122334455667788)
        assert m[off + 64 + 16 + 12:off + 64 + 32] == struct.pack("=I", 0xABCD)
        assert ring.recv_wqe(2).wr_id == 0x1122334455667788
        ring.cqe(3).byte_len = 99
        assert struct.unpack_from("=I", m, 256 + 3 * 128 + 20)[0] == 99
        ring.store_prod(7)
        ring.store_cons(2**32 + 5)  # wraps like the free-running uint32 counter it is
        assert (ring.load_prod(), ring.load_cons()) == (7, 5)
        assert struct.unpack_from("=I", m, 64)[0] == 7
        assert struct.unpack_from("=I", m, 128)[0] == 5
    with pytest.raises(TypeError):
        ring.entry(0)  # released
    ring.release()  # idempotent
    m.close()  # no exported pointer left


def test_ringview_keeps_mmap_open_until_released():
    m = mmap.mmap(-1, 4096)
    native.ring_init(m, lib.RNIC_RING_CQ, 64, 4)
    ring = native.RingView(m)
    with pytest.raises(BufferError):
        m.close()
    ring.release()
    m.close()


def test_ringview_validates_header():
    buf = bytearray(native.ring_bytes(64, 4))
    with pytest.raises(ValueError, match="magic"):
        native.RingView(buf)
    native.ring_init(buf, lib.RNIC_RING_CQ, 64, 4)
    struct.pack_into("=I", buf, 16, 1 << 16)  # num_entries grew: would overflow
    with pytest.raises(ValueError, match="overflow"):
        native.RingView(buf)
    struct.pack_into("=I", buf, 16, 6)
    with pytest.raises(ValueError, match="geometry"):
        native.RingView(buf)
    with pytest.raises(ValueError, match="smaller"):
        native.RingView(bytearray(100))
    with pytest.raises(BufferError):
        native.RingView(b"\x00" * 4096)  # read-only


def test_ring_index_atomics():
    p = ffi.new("uint32_t[2]")
    lib.rnic_store_release(p, 5)
    assert lib.rnic_load_acquire(p) == 5
    assert lib.rnic_xchg(p, 9) == 5 and p[0] == 9
    assert lib.rnic_fetch_add(p, 3) == 9 and p[0] == 12
    assert lib.rnic_fetch_add(p, 0xFFFFFFFF) == 12 and p[0] == 11  # wraps mod 2^32
    assert p[1] == 0


def test_fetch_add_from_threads_is_atomic():
    p = ffi.new("uint32_t *")

    def work():
        for _ in range(20000):
            lib.rnic_fetch_add(p, 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p[0] == 80000


# ---- placement ---------------------------------------------------------

def test_copy_in_out():
    dst = bytearray(32)
    native.copy_in(dst, 4, b"abcd")
    native.copy_in(dst, 28, memoryview(b"wxyz"))
    native.copy_in(dst, 32, b"")
    assert dst == b"\0" * 4 + b"abcd" + b"\0" * 20 + b"wxyz"
    assert native.copy_out(dst, 4, 4) == b"abcd"
    assert native.copy_out(dst, 28, 4) == b"wxyz"
    assert native.copy_out(dst, 32, 0) == b""
    assert native.copy_out(bytes(dst), 0, 32) == bytes(dst)


@pytest.mark.parametrize("off,n", [(29, 4), (33, 0), (0, 33), (SIZE_MAX, 2), (SIZE_MAX, 1),
                                   (2, SIZE_MAX), (SIZE_MAX - 1, 33), (2**63, 2**63)])
def test_copy_bounds_including_wrapping_offsets(off, n):
    dst = native.region(bytearray(32))
    src = native.region(bytearray(b"\x55" * 64))
    assert lib.rnic_copy_in(dst, 32, off, src, n) == -errno.ERANGE
    assert lib.rnic_copy_out(src, dst, 32, off, n) == -errno.ERANGE
    assert bytes(ffi.buffer(dst)) == bytes(32)
    if n <= 64:
        with pytest.raises(OSError) as exc:
            native.copy_in(dst, off, bytes(n))
        assert exc.value.errno == errno.ERANGE
        with pytest.raises(OSError) as exc:
            native.copy_out(dst, off, n)
        assert exc.value.errno == errno.ERANGE


# ---- batch UDP I/O ---------------------------------------------------------------------

def _ip_be(ip: str) -> int:
    return struct.unpack("=I", socket.inet_aton(ip))[0]


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    yield a, b
    a.close()
    b.close()


def _recv_all(sock, bufs, buf_size, want, lens, addrs, ports):
    """recvmmsg until want datagrams arrived (bounded wait)."""
    got, deadline = 0, time.monotonic() + 5
    while got < want and time.monotonic() < deadline:
        select.select([sock], [], [], 0.5)
        n = lib.rnic_recv_batch(sock.fileno(), bufs + got * buf_size, buf_size, want - got,
                                lens + got, addrs + got, ports + got)
        assert n >= 0
        got += n
    return got


def test_send_and_recv_batch_loopback(udp_pair):
    a, b = udp_pair
    count, size = 40, 2048
    payloads = [os.urandom(random.Random(i).randrange(0, size)) for i in range(count)]
    out = ffi.new("uint8_t[]", count * size)
    for i, p in enumerate(payloads):
        ffi.memmove(out + i * size, p, len(p))
    lens = ffi.new("uint32_t[]", [len(p) for p in payloads])
    dst_addr = ffi.new("uint32_t[]", [_ip_be("127.0.0.1")] * count)
    dst_port = ffi.new("uint16_t[]", [b.getsockname()[1]] * count)
    assert lib.rnic_send_batch(a.fileno(), out, size, lens, count, dst_addr, dst_port) == count

    inb = ffi.new("uint8_t[]", count * size)
    rlens = ffi.new("uint32_t[]", count)
    raddr = ffi.new("uint32_t[]", count)
    rport = ffi.new("uint16_t[]", count)
    assert _recv_all(b, inb, size, count, rlens, raddr, rport) == count
    for i, p in enumerate(payloads):
        assert rlens[i] == len(p)
        assert ffi.buffer(inb + i * size, rlens[i])[:] == p
        assert raddr[i] == _ip_be("127.0.0.1") and rport[i] == a.getsockname()[1]
    # Nothing left: 0, not an error.
    assert lib.rnic_recv_batch(b.fileno(), inb, size, count, rlens, raddr, rport) == 0


def test_batch_connected_socket_and_truncation(udp_pair):
    a, b = udp_pair
    a.connect(b.getsockname())
    out = ffi.new("uint8_t[]", 2 * 1000)
    ffi.memmove(out, b"\x01" * 1000, 1000)
    lens = ffi.new("uint32_t[]", [1000, 10])
    assert lib.rnic_send_batch(a.fileno(), out, 1000, lens, 2, ffi.NULL, ffi.NULL) == 2
    inb = ffi.new("uint8_t[]", 2 * 100)
    rlens = ffi.new("uint32_t[]", 2)
    assert _recv_all(b, inb, 100, 2, rlens, ffi.new("uint32_t[2]"),
                     ffi.new("uint16_t[2]")) == 2
    assert rlens[0] == 1000  # > buf_size: truncated, the caller drops it
    assert ffi.buffer(inb, 100)[:] == b"\x01" * 100
    assert rlens[1] == 10


def test_batch_argument_errors(udp_pair):
    a, b = udp_pair
    big = lib.RNIC_MAX_BATCH + 1
    bufs = ffi.new("uint8_t[]", big * 16)
    lens = ffi.new("uint32_t[]", big)
    addrs = ffi.new("uint32_t[]", big)
    ports = ffi.new("uint16_t[]", big)
    fd = b.fileno()
    assert lib.rnic_recv_batch(fd, bufs, 16, big, lens, addrs, ports) == -errno.EINVAL
    assert lib.rnic_send_batch(fd, bufs, 16, lens, big, addrs, ports) == -errno.EINVAL
    assert lib.rnic_recv_batch(fd, bufs, 16, 0, lens, addrs, ports) == 0
    assert lib.rnic_recv_batch(fd, bufs, 16, 4, lens, ffi.NULL, ffi.NULL) == 0  # EAGAIN
    lens[0] = 17  # longer than its slot
    assert lib.rnic_send_batch(fd, bufs, 16, lens, 1, addrs, ports) == -errno.EINVAL
    assert lib.rnic_send_batch(fd, bufs, 16, lens, 1, addrs, ffi.NULL) == -errno.EINVAL
    assert lib.rnic_recv_batch(-1, bufs, 16, 1, lens, addrs, ports) == -errno.EBADF
    assert lib.rnic_send_batch(-1, bufs, 16, lens, 0, addrs, ports) == 0  # nothing to do


def test_ring_numbers_in_python_are_the_headers():
    """rnicd.wire.rings repeats rnic_abi.h's numbers for Python: each one is the C one."""
    from rnicd.wire import rings
    assert rings.ABI_VERSION == lib.RNIC_ABI_VERSION
    assert rings.RING_MAGIC == lib.RNIC_RING_MAGIC
    assert rings.RING_HDR_SIZE == lib.RNIC_RING_HDR_SIZE == ffi.sizeof("struct rnic_ring_hdr")
    assert rings.SEND_WQE_HDR == lib.RNIC_SEND_WQE_HDR_SIZE == ffi.sizeof("struct rnic_send_wqe")
    assert rings.RECV_WQE_HDR == lib.RNIC_RECV_WQE_HDR_SIZE == ffi.sizeof("struct rnic_recv_wqe")
    assert rings.SGE_SIZE == ffi.sizeof("struct rnic_sge")
    assert rings.CQE_SIZE == lib.RNIC_CQE_SIZE == ffi.sizeof("struct rnic_cqe")
    assert [(k.name, k.value) for k in rings.RingKind] == [
        (n, getattr(lib, f"RNIC_RING_{n}")) for n in ("SQ", "RQ", "SRQ", "CQ")]


def test_ring_struct_formats_are_the_headers():
    """The struct formats the Python client packs WQEs and unpacks CQEs with put every field
    where the compiled header has it: each field written through cffi with a distinct value
    reads back in its place of the format."""
    from rnicd.wire import rings
    cases = [
        (rings.SEND_WQE, "struct rnic_send_wqe",
         ["wr_id", "remote_addr", "compare_add", "swap", "opcode", "_rsvd0", "num_sge",
          "send_flags", "imm_data", "rkey", "inline_len", "ah", "remote_qpn", "remote_qkey"]),
        (rings.RECV_WQE, "struct rnic_recv_wqe", ["wr_id", "num_sge", "_rsvd0"]),
        (rings.SGE, "struct rnic_sge", ["addr", "length", "lkey"]),
        (rings.CQE, "struct rnic_cqe",
         ["wr_id", "status", "opcode", "vendor_err", "byte_len", "imm_data", "qp_num", "src_qp",
          "wc_flags", "pkey_index", "slid", "sl", "dlid_path_bits"]),
    ]
    for fmt, ctype, fields in cases:
        assert fmt.size == ffi.sizeof(ctype), ctype
        p = ffi.new(ctype + " *")
        values = [i + 1 for i in range(len(fields))]
        for name, v in zip(fields, values, strict=True):
            setattr(p, name, v)
        assert list(fmt.unpack_from(ffi.buffer(p, fmt.size))) == values, ctype
    # the union members a BIND_MW WQE packs into compare_add/swap/ah
    p = ffi.new("struct rnic_send_wqe *")
    p.bind_length, p.bind_mw, p.bind_lkey, p.bind_access = 7, 8, 9, 10
    t = rings.SEND_WQE.unpack_from(ffi.buffer(p, rings.SEND_WQE.size))
    assert (t[2], t[3], t[11]) == (7, 8 | 9 << 32, 10)

"""RoCEv2 packets: BTH + extended headers + payload + pad + ICRC (IBTA vol 1 ch. 9, Annex A17).

A RoCEv2 packet is the payload of a UDP datagram to port 4791 (Annex A17). This module lays out and
checks the bytes of that UDP payload; it does no I/O. parse() treats its input as untrusted: the
only exception it raises for a bad datagram is MalformedPacket, whose `reason` is a short token
usable as a counter name suffix (see MALFORMED_REASONS).

Byte order is big-endian except the ICRC, which is the zlib CRC-32 value stored little-endian
(as rxe and scapy's BTH.pack_icrc do; this makes the CRC's bit stream IBTA 7.8.1 order).
"""
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from rnicd.native import lib as _lib

from .opcodes import BTH_LEN, HEADER_LEN, ICRC_LEN, OPCODES, Hdr, OpInfo

ROCEV2_PORT = 4791  # Annex A17: IANA-assigned UDP destination port

# --- header layouts (one struct each) -------------------------------------------------------
# IBTA 9.3.1 BTH: opcode | SE M Pad(2) TVer(4) | P_Key | F B Resv6 DestQP(24) | A Resv7 PSN(24)
BTH = struct.Struct("!BBHII")
RETH = struct.Struct("!QII")        # 9.3.4: VA, R_Key, DMA Length
AETH = struct.Struct("!I")          # 9.3.6: Syndrome(8) | MSN(24)
ATOMICETH = struct.Struct("!QIQQ")  # 9.3.5: VA, R_Key, Swap (or Add) Data, Compare Data
ATOMICACKETH = struct.Struct("!Q")  # 9.3.7: Original Remote Data
IMMDT = struct.Struct("!I")         # 9.3.8: Immediate Data (opaque 4 bytes)
IETH = struct.Struct("!I")          # 9.3.9: R_Key to invalidate
DETH = struct.Struct("!II")         # 9.3.3: Q_Key | Resv8 SrcQP(24)
XRCETH = struct.Struct("!I")        # Annex A14.4.2.1: Resv8 | XRCSRQ(24)
ICRC = struct.Struct("<I")          # IBTA 7.8.1, Annex A17 (see module docstring)

_BTH_SE, _BTH_M, _BTH_PAD_SHIFT, _BTH_TVER = 0x80, 0x40, 4, 0x0F
_BIT31, _BIT30 = 1 << 31, 1 << 30
MASK24 = 0xFFFFFF

# ---- PSN arithmetic (IBTA 9.7.1: 24-bit, modulo 2^24) --------------------------------------
PSN_MASK = MASK24


def psn_add(a: int, n: int) -> int:
    return (a + n) & PSN_MASK


# a - b as a signed distance in (-2^23, 2^23]: the data plane's definition, so that both
# planes decide alike at every distance (psn_diff(a, b) with a, b in 0..2^24-1)
psn_diff = _lib.rnic_psn_diff


def psn_lt(a: int, b: int) -> bool:
    return psn_diff(a, b) < 0


def psn_le(a: int, b: int) -> bool:
    return psn_diff(a, b) <= 0


def psn_gt(a: int, b: int) -> bool:
    return psn_diff(a, b) > 0


def psn_ge(a: int, b: int) -> bool:
    return psn_diff(a, b) >= 0


# ---- AETH syndrome (IBTA 9.7.5.2: bit 7 reserved, bits 6..5 type, bits 4..0 value) --------
class AethKind(IntEnum):
    ACK = 0b00
    RNR_NAK = 0b01
    RESERVED = 0b10   # also returned when reserved bit 7 is set
    NAK = 0b11


class NakCode(IntEnum):
    """NAK codes in the AETH syndrome (IBTA 9.7.5.2; 5..31 reserved)."""
    PSN_SEQUENCE_ERROR = 0
    INVALID_REQUEST = 1
    REMOTE_ACCESS_ERROR = 2
    REMOTE_OPERATIONAL_ERROR = 3
    INVALID_RD_REQUEST = 4


# Flat names for the same values (what rnicd/core uses).
AETH_ACK, AETH_RNR, AETH_NAK, AETH_RESERVED = (
    AethKind.ACK, AethKind.RNR_NAK, AethKind.NAK, AethKind.RESERVED)
NAK_PSN_SEQUENCE = NakCode.PSN_SEQUENCE_ERROR
NAK_INVALID_REQUEST = NakCode.INVALID_REQUEST
NAK_REMOTE_ACCESS = NakCode.REMOTE_ACCESS_ERROR
NAK_REMOTE_OPERATIONAL = NakCode.REMOTE_OPERATIONAL_ERROR
NAK_INVALID_RD_REQUEST = NakCode.INVALID_RD_REQUEST


CREDITS_INVALID = 0x1F  # 9.7.7.2: "invalid" credit count, used when not doing credits


def aeth_ack(credits: int = CREDITS_INVALID) -> int:
    return _field(credits, 5, "credits")


def aeth_rnr(timer_code: int) -> int:
    return (AethKind.RNR_NAK << 5) | _field(timer_code, 5, "timer_code")


def aeth_nak(code: int) -> int:
    return (AethKind.NAK << 5) | _field(code, 5, "nak code")


def classify_aeth(syndrome: int) -> tuple[AethKind, int]:
    """-> (kind, 5-bit value: credit count, RNR timer code or NAK code). Never raises."""
    syndrome &= 0xFF
    if syndrome & 0x80:
        return AethKind.RESERVED, syndrome & 0x1F
    return AethKind(syndrome >> 5), syndrome & 0x1F


# IBTA 9.7.5.2 (RNR NAK timer encoding): 5-bit code -> minimum delay in microseconds.
RNR_TIMER_US = (
    655360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920,
    2560, 3840, 5120, 7680, 10240, 15360, 20480, 30720, 40960, 61440, 81920, 122880,
    163840, 245760, 327680, 491520,
)


def timeout_seconds(t: int) -> float | None:
    """Local ACK timeout code (5 bits) -> seconds: 4.096 us * 2^t; 0 = infinite (9.7.6.1.3)."""
    t = _field(t, 5, "timeout")
    return None if t == 0 else 4.096e-6 * (1 << t)


# ---- parsed packet -------------------------------------------------------------------------
class MalformedPacket(Exception):
    """A datagram that is not a valid RoCEv2 packet; `reason` is a counter-name suffix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


MALFORMED_REASONS = ("short", "bad_icrc", "bad_tver", "unknown_opcode", "len_mismatch",
                     "bad_pad")


@dataclass(slots=True)
class Packet:
    opcode: int
    se: bool = False
    migreq: bool = False
    pad: int = 0            # set by parse(); build() computes it from the payload
    tver: int = 0
    pkey: int = 0xFFFF      # the default partition key, full member
    fecn: bool = False
    becn: bool = False
    dest_qp: int = 0
    ackreq: bool = False
    psn: int = 0
    reth_va: int | None = None
    reth_rkey: int | None = None
    reth_len: int | None = None
    aeth_syndrome: int | None = None
    aeth_msn: int | None = None
    atomic_va: int | None = None
    atomic_rkey: int | None = None
    atomic_swap_add: int | None = None
    atomic_compare: int | None = None
    atomic_orig: int | None = None
    imm: int | None = None          # ImmDt as a big-endian int (the 4 wire bytes, unchanged)
    ieth_rkey: int | None = None
    deth_qkey: int | None = None
    deth_src_qp: int | None = None
    xrc_srqn: int | None = None     # XRCETH: the responder's XRC SRQ (Annex A14)
    payload: bytes | memoryview = b""   # parse(): a view into the datagram, without pad
    bad_len: str | None = None      # parse(lenient=True): the length check that failed

    @property
    def info(self) -> OpInfo:
        return OPCODES[self.opcode]


# ---- extended headers: Hdr -> (struct, get, put), in one table -----------------------------
def _req(pkt: Packet, name: str, bits: int) -> int:
    v = getattr(pkt, name)
    if v is None:
        raise ValueError(f"{OPCODES[pkt.opcode].name} needs {name}")
    return _field(v, bits, name)


def _field(v, bits: int, name: str) -> int:
    v = int(v)
    if not 0 <= v < (1 << bits):
        raise ValueError(f"{name}={v:#x} does not fit in {bits} bits")
    return v


def _get_reth(b, o, p):
    p.reth_va, p.reth_rkey, p.reth_len = RETH.unpack_from(b, o)


def _put_reth(b, o, p):
    RETH.pack_into(b, o, _req(p, "reth_va", 64), _req(p, "reth_rkey", 32),
                   _req(p, "reth_len", 32))


def _get_aeth(b, o, p):
    (w,) = AETH.unpack_from(b, o)
    p.aeth_syndrome, p.aeth_msn = w >> 24, w & MASK24


def _put_aeth(b, o, p):
    AETH.pack_into(b, o, _req(p, "aeth_syndrome", 8) << 24 | _req(p, "aeth_msn", 24))


def _get_atomic(b, o, p):
    p.atomic_va, p.atomic_rkey, p.atomic_swap_add, p.atomic_compare = \
        ATOMICETH.unpack_from(b, o)


def _put_atomic(b, o, p):
    ATOMICETH.pack_into(b, o, _req(p, "atomic_va", 64), _req(p, "atomic_rkey", 32),
                        _req(p, "atomic_swap_add", 64), _req(p, "atomic_compare", 64))


def _get_atomicack(b, o, p):
    (p.atomic_orig,) = ATOMICACKETH.unpack_from(b, o)


def _put_atomicack(b, o, p):
    ATOMICACKETH.pack_into(b, o, _req(p, "atomic_orig", 64))


def _get_imm(b, o, p):
    (p.imm,) = IMMDT.unpack_from(b, o)


def _put_imm(b, o, p):
    IMMDT.pack_into(b, o, _req(p, "imm", 32))


def _get_ieth(b, o, p):
    (p.ieth_rkey,) = IETH.unpack_from(b, o)


def _put_ieth(b, o, p):
    IETH.pack_into(b, o, _req(p, "ieth_rkey", 32))


def _get_deth(b, o, p):
    p.deth_qkey, w = DETH.unpack_from(b, o)
    p.deth_src_qp = w & MASK24   # Resv8 ignored on receive


def _put_deth(b, o, p):
    DETH.pack_into(b, o, _req(p, "deth_qkey", 32), _req(p, "deth_src_qp", 24))


def _get_xrceth(b, o, p):
    (w,) = XRCETH.unpack_from(b, o)
    p.xrc_srqn = w & MASK24     # Resv8 ignored on receive


def _put_xrceth(b, o, p):
    XRCETH.pack_into(b, o, _req(p, "xrc_srqn", 24))


_EXT = {
    Hdr.XRCETH: (XRCETH, _get_xrceth, _put_xrceth),
    Hdr.RETH: (RETH, _get_reth, _put_reth),
    Hdr.AETH: (AETH, _get_aeth, _put_aeth),
    Hdr.ATOMICETH: (ATOMICETH, _get_atomic, _put_atomic),
    Hdr.ATOMICACKETH: (ATOMICACKETH, _get_atomicack, _put_atomicack),
    Hdr.IMMDT: (IMMDT, _get_imm, _put_imm),
    Hdr.IETH: (IETH, _get_ieth, _put_ieth),
    Hdr.DETH: (DETH, _get_deth, _put_deth),
}
if BTH.size != BTH_LEN or ICRC.size != ICRC_LEN or any(
        s.size != HEADER_LEN[h] for h, (s, _g, _p) in _EXT.items()):
    raise ImportError("roce.py header structs disagree with opcodes.HEADER_LEN")


# ---- ICRC (IBTA Annex A17: CRC-32 over a masked pseudo-header + BTH + rest) -------------------
# Pseudo-header: 8 bytes 0xFF (stand-in for the LRH), then the IP and UDP headers with the
# variant fields (IPv4 TOS, TTL, checksum; IPv6 traffic class, flow label, hop limit; UDP
# checksum) set to all ones. The IPv4 ID and flags are NOT masked: the sender's values must be
# known. rnicd sends with ID 0 and DF set (unconnected UDP socket with IP_PMTUDISC_DO), so
# those are assumed here; the ip_id keyword exists for other senders.
_LRH_MASK = b"\xff" * 8
_IPV4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_IPV6_UDP = struct.Struct("!IHBB16s16sHHHH")
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_PAD = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")


def ipv4_mapped_gid(ip: str) -> bytes:
    """The RoCEv2 GID of an IPv4 address: ::ffff:a.b.c.d (IBTA A17.4.5.1)."""
    return _V4_MAPPED + _ip_bytes(ip)


def ipv4_of_gid(gid: bytes) -> str | None:
    """The IPv4 address an IPv4-mapped GID stands for, else None (an IPv6 GID)."""
    gid = bytes(gid)
    if len(gid) != 16 or not gid.startswith(_V4_MAPPED):
        return None
    return ".".join(str(b) for b in gid[12:])


def _ip_bytes(ip) -> bytes:
    if isinstance(ip, str):
        if ip[:7].lower() == "::ffff:":
            ip = ip[7:]   # IPv4-mapped, as a dual-stack socket reports an IPv4 peer
        parts = ip.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise ValueError(f"not a dotted-quad IPv4 address: {ip!r} (pass IPv6 as 16 bytes)")
        return bytes(int(p) for p in parts)
    ip = bytes(ip)
    if len(ip) == 16 and ip.startswith(_V4_MAPPED):
        return ip[12:]  # an IPv4-mapped GID travels as IPv4 (Annex A17)
    if len(ip) not in (4, 16):
        raise ValueError(f"IP address must be 4 or 16 bytes, got {len(ip)}")
    return ip


def _pseudo_header(src_ip, dst_ip, sport: int, dport: int, roce_len: int, ip_id: int) -> bytes:
    src, dst = _ip_bytes(src_ip), _ip_bytes(dst_ip)
    if len(src) != len(dst):
        raise ValueError("src_ip and dst_ip are of different IP versions")
    udp_len = 8 + roce_len
    if len(src) == 4:
        return _LRH_MASK + _IPV4_UDP.pack(
            0x45, 0xFF, 20 + udp_len, _field(ip_id, 16, "ip_id"), 0x4000, 0xFF, 17, 0xFFFF,
            src, dst, sport, dport, udp_len, 0xFFFF)
    return _LRH_MASK + _IPV6_UDP.pack(
        0x6FFFFFFF, udp_len, 17, 0xFF, src, dst, sport, dport, udp_len, 0xFFFF)


def _icrc_parts(parts, roce_len, src_ip, dst_ip, sport, dport, ip_id) -> int:
    """CRC over pseudo-header + parts; parts[0] holds at least the BTH."""
    crc = zlib.crc32(_pseudo_header(src_ip, dst_ip, sport, dport, roce_len, ip_id))
    first = parts[0]
    crc = zlib.crc32(first[:4], crc)
    crc = zlib.crc32(b"\xff", crc)      # BTH byte 4 (FECN, BECN, Resv6) masked
    crc = zlib.crc32(first[5:], crc)
    for part in parts[1:]:
        crc = zlib.crc32(part, crc)
    return crc


def icrc(data, src_ip, dst_ip, sport: int, dport: int = ROCEV2_PORT, *, ip_id: int = 0) -> int:
    """ICRC of a packet given without its ICRC (BTH .. pad). Appended as ICRC.pack(value)."""
    mv = memoryview(data).cast("B")
    if len(mv) < BTH_LEN:
        raise ValueError("icrc() needs at least a BTH")
    return _icrc_parts((mv,), len(mv) + ICRC_LEN, src_ip, dst_ip, sport, dport, ip_id)


# ---- build / parse -------------------------------------------------------------------------
def wire_len(opcode: int, payload_len: int) -> int:
    """Bytes of UDP payload for a packet of this opcode carrying payload_len bytes."""
    return BTH_LEN + OPCODES[opcode].header_len + payload_len + (-payload_len % 4) + ICRC_LEN


def build(pkt, payload=None, *, src_ip, dst_ip, sport: int, dport: int = ROCEV2_PORT,
          ip_id: int = 0) -> bytes:
    """Lay out one packet (the UDP payload). `pkt` is a Packet or a dict of Packet fields;
    `payload` defaults to pkt.payload. Raises ValueError on impossible field values."""
    if not isinstance(pkt, Packet):
        pkt = Packet(**pkt)
    info = OPCODES.get(pkt.opcode)
    if info is None:
        raise ValueError(f"opcode {pkt.opcode!r} is not in the opcode table")
    payload = memoryview(pkt.payload if payload is None else payload).cast("B")
    n = len(payload)
    if n and not info.has_payload:
        raise ValueError(f"{info.name} carries no payload")
    pad = -n % 4
    if pad and not info.is_last:   # FIRST/MIDDLE carry exactly PMTU bytes (ch. 9)
        raise ValueError(f"{info.name} payload must be a multiple of 4 bytes")
    hdr = bytearray(BTH_LEN + info.header_len)
    BTH.pack_into(
        hdr, 0, info.opcode,
        (_BTH_SE if pkt.se else 0) | (_BTH_M if pkt.migreq else 0)
        | pad << _BTH_PAD_SHIFT | _field(pkt.tver, 4, "tver"),
        _field(pkt.pkey, 16, "pkey"),
        (_BIT31 if pkt.fecn else 0) | (_BIT30 if pkt.becn else 0)
        | _field(pkt.dest_qp, 24, "dest_qp"),
        (_BIT31 if pkt.ackreq else 0) | _field(pkt.psn, 24, "psn"))
    off = BTH_LEN
    for h in info.ext:
        st, _get, put = _EXT[h]
        put(hdr, off, pkt)
        off += st.size
    roce_len = len(hdr) + n + pad + ICRC_LEN
    crc = _icrc_parts((hdr, payload, _PAD[pad]), roce_len, src_ip, dst_ip, sport, dport, ip_id)
    return b"".join((hdr, payload, _PAD[pad], ICRC.pack(crc)))


def parse(datagram, *, src_ip=None, dst_ip=None, sport: int | None = None,
          dport: int = ROCEV2_PORT, check_icrc: bool = True, ip_id: int = 0,
          lenient: bool = False) -> Packet:
    """Parse an untrusted UDP payload. Raises MalformedPacket(reason) and nothing else for bad
    bytes. Packet.payload is a view into `datagram`: copy it before reusing the buffer.
    lenient: a packet whose headers are all there but whose payload length or pad is wrong
    is returned with bad_len set (and payload = everything after the headers), so that a
    responder can apply the checks that come before the length check (IBTA 9.9.3)."""
    untrusted = memoryview(datagram).cast("B")
    n = len(untrusted)
    if n < BTH_LEN + ICRC_LEN:
        raise MalformedPacket("short")
    end = n - ICRC_LEN
    if check_icrc:
        if src_ip is None or dst_ip is None or sport is None:
            raise ValueError("check_icrc needs src_ip, dst_ip and sport")
        (got,) = ICRC.unpack_from(untrusted, end)
        if got != _icrc_parts((untrusted[:end],), n, src_ip, dst_ip, sport, dport, ip_id):
            raise MalformedPacket("bad_icrc")
    op, b1, pkey, w1, w2 = BTH.unpack_from(untrusted)
    if b1 & _BTH_TVER:                 # 9.3.1: transport header version must be 0
        raise MalformedPacket("bad_tver")
    info = OPCODES.get(op)
    if info is None:
        raise MalformedPacket("unknown_opcode")
    hend = BTH_LEN + info.header_len
    if end < hend:
        raise MalformedPacket("short")
    body = end - hend
    pad = (b1 >> _BTH_PAD_SHIFT) & 3
    bad = None
    if body & 3:                       # payload + pad is a multiple of 4 (9.3.1)
        bad = "len_mismatch"
    elif not info.has_payload:
        if body:
            bad = "len_mismatch"
        elif pad:
            bad = "bad_pad"
    elif pad and (not info.is_last or pad > body):
        bad = "bad_pad"
    if bad is not None:
        if not lenient:
            raise MalformedPacket(bad)
        pad = 0
    pkt = Packet(
        opcode=info.opcode, se=bool(b1 & _BTH_SE), migreq=bool(b1 & _BTH_M), pad=pad,
        tver=0, pkey=pkey, fecn=bool(w1 & _BIT31), becn=bool(w1 & _BIT30),
        dest_qp=w1 & MASK24, ackreq=bool(w2 & _BIT31), psn=w2 & MASK24,
        payload=untrusted[hend:end - pad], bad_len=bad)
    off = BTH_LEN
    for h in info.ext:
        st, get, _put = _EXT[h]
        get(untrusted, off, pkt)
        off += st.size
    return pkt

"""RoCEv2 wire layer: round trips, scapy as an independent oracle, malformed input, PSNs."""
import random
import socket
import struct

import pytest

from rnicd.wire import roce
from rnicd.wire.opcodes import (
    HEADER_LEN,
    OPCODES,
    Hdr,
    Kind,
    Opcode,
    Position,
    Transport,
    read_resp_opcode,
    segments,
    send_opcode,
    write_opcode,
)
from rnicd.wire.roce import AethKind, MalformedPacket, NakCode, Packet

SRC, DST, SPORT = "192.0.2.1", "198.51.100.7", 49152
FLOW = dict(src_ip=SRC, dst_ip=DST, sport=SPORT)

# Distinctive values for every extended header field (top bits set to catch sign/width bugs).
EXT_VALUES = {
    Hdr.RETH: dict(reth_va=0x8123456789ABCDEF, reth_rkey=0xF00DBEEF, reth_len=0x80001234),
    Hdr.AETH: dict(aeth_syndrome=0x7F, aeth_msn=0xFEDCBA),
    Hdr.ATOMICETH: dict(atomic_va=0xFFFF000011112222, atomic_rkey=0x89ABCDEF,
                        atomic_swap_add=0x8000000000000001, atomic_compare=0x0123456789ABCDEF),
    Hdr.ATOMICACKETH: dict(atomic_orig=0xDEADBEEFCAFEF00D),
    Hdr.IMMDT: dict(imm=0x80A0B0C0),
    Hdr.IETH: dict(ieth_rkey=0xA5A5A5A5),
    Hdr.DETH: dict(deth_qkey=0x80010002, deth_src_qp=0xABCDEF),
    Hdr.XRCETH: dict(xrc_srqn=0xFEDCBA),
}
ALL_OPS = sorted(OPCODES)


def sample(op: int, payload_len: int | None = None, **over) -> Packet:
    info = OPCODES[op]
    fields = dict(opcode=op, se=True, migreq=True, pkey=0x8001, dest_qp=0xC0FFEE, ackreq=True,
                  psn=0xFFFFFE)
    for h in info.ext:
        fields.update(EXT_VALUES[h])
    if payload_len is None:
        payload_len = (256 if not info.is_last else 13) if info.has_payload else 0
    fields["payload"] = bytes((i * 7 + 3) & 0xFF for i in range(payload_len))
    fields.update(over)
    return Packet(**fields)


def ext_fields(pkt: Packet) -> dict:
    return {k: getattr(pkt, k) for h in EXT_VALUES for k in EXT_VALUES[h]}


# ---- opcode table ---------------------------------------------------------------------------
def test_opcode_numbers_match_ibta():
    expect = {
        "SEND_FIRST": 0x00, "SEND_MIDDLE": 0x01, "SEND_LAST": 0x02,
        "SEND_LAST_WITH_IMMEDIATE": 0x03, "SEND_ONLY": 0x04, "SEND_ONLY_WITH_IMMEDIATE": 0x05,
        "RDMA_WRITE_FIRST": 0x06, "RDMA_WRITE_MIDDLE": 0x07, "RDMA_WRITE_LAST": 0x08,
        "RDMA_WRITE_LAST_WITH_IMMEDIATE": 0x09, "RDMA_WRITE_ONLY": 0x0A,
        "RDMA_WRITE_ONLY_WITH_IMMEDIATE": 0x0B, "RDMA_READ_REQUEST": 0x0C,
        "RDMA_READ_RESPONSE_FIRST": 0x0D, "RDMA_READ_RESPONSE_MIDDLE": 0x0E,
        "RDMA_READ_RESPONSE_LAST": 0x0F, "RDMA_READ_RESPONSE_ONLY": 0x10, "ACKNOWLEDGE": 0x11,
        "ATOMIC_ACKNOWLEDGE": 0x12, "COMPARE_SWAP": 0x13, "FETCH_ADD": 0x14,
        "SEND_LAST_WITH_INVALIDATE": 0x16, "SEND_ONLY_WITH_INVALIDATE": 0x17,
    }
    for name, value in expect.items():
        assert Opcode["RC_" + name] == value
        if value <= 0x0B:
            assert Opcode["UC_" + name] == 0x20 | value
        assert Opcode["XRC_" + name] == 0xA0 | value   # Annex A14.4.1: RC's, prefix 101
    assert Opcode.UD_SEND_ONLY == 0x64 and Opcode.UD_SEND_ONLY_WITH_IMMEDIATE == 0x65
    assert len(OPCODES) == len(expect) + 12 + 2 + len(expect)
    for op, info in OPCODES.items():
        assert info.opcode == op and info.name == Opcode(op).name
        assert info.transport == Transport(op >> 5)
        assert info.name.startswith(info.transport.name + "_")


@pytest.mark.parametrize("op, ext, header_len", [
    (Opcode.RC_SEND_ONLY, (), 0),
    (Opcode.RC_SEND_ONLY_WITH_IMMEDIATE, (Hdr.IMMDT,), 4),
    (Opcode.RC_SEND_LAST_WITH_INVALIDATE, (Hdr.IETH,), 4),
    (Opcode.RC_RDMA_WRITE_FIRST, (Hdr.RETH,), 16),
    (Opcode.RC_RDMA_WRITE_MIDDLE, (), 0),
    (Opcode.RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE, (Hdr.RETH, Hdr.IMMDT), 20),
    # Annex A14.4.2: the XRCETH follows the BTH on every XRC request, on no response
    (Opcode.XRC_SEND_MIDDLE, (Hdr.XRCETH,), 4),
    (Opcode.XRC_SEND_ONLY_WITH_IMMEDIATE, (Hdr.XRCETH, Hdr.IMMDT), 8),
    (Opcode.XRC_RDMA_WRITE_ONLY_WITH_IMMEDIATE, (Hdr.XRCETH, Hdr.RETH, Hdr.IMMDT), 24),
    (Opcode.XRC_RDMA_WRITE_MIDDLE, (Hdr.XRCETH,), 4),
    (Opcode.XRC_RDMA_READ_REQUEST, (Hdr.XRCETH, Hdr.RETH), 20),
    (Opcode.XRC_COMPARE_SWAP, (Hdr.XRCETH, Hdr.ATOMICETH), 32),
    (Opcode.XRC_SEND_ONLY_WITH_INVALIDATE, (Hdr.XRCETH, Hdr.IETH), 8),
    (Opcode.XRC_RDMA_READ_RESPONSE_FIRST, (Hdr.AETH,), 4),
    (Opcode.XRC_ACKNOWLEDGE, (Hdr.AETH,), 4),
    (Opcode.XRC_ATOMIC_ACKNOWLEDGE, (Hdr.AETH, Hdr.ATOMICACKETH), 12),
    (Opcode.RC_RDMA_READ_REQUEST, (Hdr.RETH,), 16),
    (Opcode.RC_RDMA_READ_RESPONSE_FIRST, (Hdr.AETH,), 4),
    (Opcode.RC_RDMA_READ_RESPONSE_MIDDLE, (), 0),
    (Opcode.RC_ACKNOWLEDGE, (Hdr.AETH,), 4),
    (Opcode.RC_ATOMIC_ACKNOWLEDGE, (Hdr.AETH, Hdr.ATOMICACKETH), 12),
    (Opcode.RC_COMPARE_SWAP, (Hdr.ATOMICETH,), 28),
    (Opcode.UC_RDMA_WRITE_ONLY, (Hdr.RETH,), 16),
    (Opcode.UD_SEND_ONLY, (Hdr.DETH,), 8),
    (Opcode.UD_SEND_ONLY_WITH_IMMEDIATE, (Hdr.DETH, Hdr.IMMDT), 12),
])
def test_opcode_headers(op, ext, header_len):
    info = OPCODES[op]
    assert info.ext == ext and info.header_len == header_len
    for h in Hdr:
        assert getattr(info, h.value) == (h in ext)


def test_opcode_structure_flags():
    for info in OPCODES.values():
        assert info.is_first == (info.position in (Position.FIRST, Position.ONLY))
        assert info.is_last == (info.position in (Position.LAST, Position.ONLY))
        assert info.has_payload == (info.kind in (Kind.SEND, Kind.WRITE, Kind.READ_RESP))
        assert info.is_request == (info.kind in (Kind.SEND, Kind.WRITE, Kind.READ_REQ,
                                                 Kind.ATOMIC))
        assert info.deth == (info.transport is Transport.UD)


def test_opcode_pickers():
    P = Position
    assert [send_opcode(p) for p in P] == [0x00, 0x01, 0x02, 0x04]
    assert send_opcode(P.LAST, with_imm=True) == 0x03
    assert send_opcode(P.ONLY, with_imm=True) == 0x05
    assert send_opcode(P.LAST, with_inv=True) == 0x16
    assert send_opcode(P.ONLY, with_inv=True) == 0x17
    assert send_opcode(P.ONLY, transport=Transport.UC) == 0x24
    assert send_opcode(P.ONLY, with_imm=True, transport=Transport.UD) == 0x65
    assert [write_opcode(p) for p in P] == [0x06, 0x07, 0x08, 0x0A]
    assert write_opcode(P.LAST, with_imm=True) == 0x09
    assert write_opcode(P.ONLY, with_imm=True, transport=Transport.UC) == 0x2B
    assert [read_resp_opcode(p) for p in P] == [0x0D, 0x0E, 0x0F, 0x10]
    assert [read_resp_opcode(p, Transport.XRC) for p in P] == [0xAD, 0xAE, 0xAF, 0xB0]
    assert send_opcode(P.LAST, with_imm=True, transport=Transport.XRC) == 0xA3
    assert write_opcode(P.FIRST, transport=Transport.XRC) == 0xA6
    for bad in (lambda: send_opcode(P.FIRST, with_imm=True),
                lambda: send_opcode(P.ONLY, with_imm=True, with_inv=True),
                lambda: send_opcode(P.ONLY, with_inv=True, transport=Transport.UC),
                lambda: send_opcode(P.FIRST, transport=Transport.UD),
                lambda: write_opcode(P.MIDDLE, with_imm=True),
                lambda: write_opcode(P.ONLY, transport=Transport.UD)):
        with pytest.raises(ValueError):
            bad()


def test_segments():
    assert list(segments(0, 1024)) == [(Position.ONLY, 0, 0)]
    assert list(segments(1024, 1024)) == [(Position.ONLY, 0, 1024)]
    assert list(segments(1025, 1024)) == [(Position.FIRST, 0, 1024), (Position.LAST, 1024, 1)]
    segs = list(segments(4096 * 3, 4096))
    assert [s[0] for s in segs] == [Position.FIRST, Position.MIDDLE, Position.LAST]
    assert sum(s[2] for s in segs) == 4096 * 3


# ---- build/parse round trips ----------------------------------------------------------------
@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: OPCODES[op].name)
def test_roundtrip(op):
    pkt = sample(op)
    data = roce.build(pkt, **FLOW)
    assert len(data) == roce.wire_len(op, len(pkt.payload))
    assert len(data) % 4 == 0
    got = roce.parse(data, **FLOW)
    assert got.opcode == op and got.info is OPCODES[op]
    for name in ("se", "migreq", "pkey", "dest_qp", "ackreq", "psn", "fecn", "becn", "tver"):
        assert getattr(got, name) == getattr(pkt, name), name
    assert got.pad == -len(pkt.payload) % 4
    assert bytes(got.payload) == pkt.payload
    assert ext_fields(got) == ext_fields(pkt)   # absent headers stay None
    # Rebuilding the parsed packet is byte-identical.
    assert roce.build(got, **FLOW) == data


def test_build_accepts_dict_and_separate_payload():
    a = roce.build({"opcode": Opcode.RC_SEND_ONLY, "psn": 5, "dest_qp": 9}, b"xyz", **FLOW)
    b = roce.build(Packet(Opcode.RC_SEND_ONLY, psn=5, dest_qp=9, payload=b"xyz"), **FLOW)
    assert a == b


def test_parse_payload_is_a_view():
    buf = bytearray(roce.build(sample(Opcode.RC_SEND_ONLY, 64), **FLOW))
    got = roce.parse(buf, **FLOW)
    assert isinstance(got.payload, memoryview) and got.payload.obj is buf
    assert len(got.payload) == 64


def test_fecn_becn_not_covered_by_icrc():
    data = bytearray(roce.build(sample(Opcode.RC_SEND_ONLY), **FLOW))
    data[4] |= 0xC0    # a switch marks FECN/BECN: the ICRC must still verify (A17 masking)
    got = roce.parse(data, **FLOW)
    assert got.fecn and got.becn


@pytest.mark.parametrize("kwargs", [
    dict(opcode=Opcode.RC_ACKNOWLEDGE, aeth_syndrome=0, aeth_msn=0, payload=b"x"),
    dict(opcode=Opcode.RC_ACKNOWLEDGE, aeth_msn=0),                      # syndrome missing
    dict(opcode=Opcode.RC_RDMA_WRITE_ONLY, reth_va=0, reth_rkey=0),       # length missing
    dict(opcode=Opcode.RC_SEND_FIRST, payload=b"abc"),                    # FIRST not aligned
    dict(opcode=Opcode.RC_SEND_ONLY, psn=1 << 24),
    dict(opcode=Opcode.RC_SEND_ONLY, dest_qp=-1),
    dict(opcode=Opcode.RC_SEND_ONLY, pkey=0x10000),
    dict(opcode=Opcode.UD_SEND_ONLY, deth_qkey=1, deth_src_qp=1 << 24),
    dict(opcode=0x15),                                                    # not in the table
])
def test_build_rejects_impossible_packets(kwargs):
    with pytest.raises(ValueError):
        roce.build(Packet(**kwargs), **FLOW)


# ---- malformed input ------------------------------------------------------------------------
def seal(body: bytes) -> bytes:
    """Append a correct ICRC to hand-made bytes."""
    return body + roce.ICRC.pack(roce.icrc(body, **FLOW))


def bth(op, *, pad=0, tver=0, dqp=1, psn=1) -> bytes:
    return roce.BTH.pack(op, pad << 4 | tver, 0xFFFF, dqp, psn)


def reason(data, **kw) -> str:
    with pytest.raises(MalformedPacket) as exc:
        roce.parse(data, **{**FLOW, **kw})
    assert exc.value.reason in roce.MALFORMED_REASONS
    return exc.value.reason


def test_malformed_reasons():
    assert reason(b"") == "short"
    assert reason(bth(4)) == "short"       # no ICRC
    assert reason(bth(4) + b"\0\0\0\0") == "bad_icrc"
    assert reason(seal(bth(4, tver=1))) == "bad_tver"
    assert reason(seal(bth(0x15))) == "unknown_opcode"
    assert reason(seal(bth(0x81) + bytes(16))) == "unknown_opcode"   # CNP: not supported
    assert reason(seal(bth(Opcode.RC_ACKNOWLEDGE))) == "short"       # AETH missing
    assert reason(seal(bth(Opcode.RC_RDMA_WRITE_ONLY) + bytes(12))) == "short"
    assert reason(seal(bth(Opcode.RC_ACKNOWLEDGE) + bytes(8))) == "len_mismatch"
    assert reason(seal(bth(Opcode.RC_SEND_ONLY) + b"abcde")) == "len_mismatch"
    assert reason(seal(bth(Opcode.RC_ACKNOWLEDGE, pad=1) + bytes(4))) == "bad_pad"
    assert reason(seal(bth(Opcode.RC_SEND_MIDDLE, pad=1) + bytes(256))) == "bad_pad"
    assert reason(seal(bth(Opcode.RC_SEND_ONLY, pad=3))) == "bad_pad"
    # pad 0..3 with enough payload is fine; pad bytes are dropped from the payload.
    got = roce.parse(seal(bth(Opcode.RC_SEND_ONLY, pad=3) + b"abcd"), **FLOW)
    assert bytes(got.payload) == b"a"


def test_wrong_flow_fails_icrc():
    data = roce.build(sample(Opcode.RC_SEND_ONLY), **FLOW)
    for kw in (dict(src_ip="192.0.2.9"), dict(sport=SPORT + 1), dict(dport=4792),
               dict(ip_id=1)):
        assert reason(data, **kw) == "bad_icrc"
    roce.parse(data, **FLOW, check_icrc=False)


def test_every_single_bit_flip_is_caught():
    data = roce.build(sample(Opcode.RC_RDMA_WRITE_ONLY, 20), **FLOW)
    for i in range(len(data)):
        if i == 4:
            continue   # FECN/BECN/Resv6 byte is masked out of the ICRC
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            assert reason(flipped) == "bad_icrc"


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: OPCODES[op].name)
def test_truncations_never_raise_anything_else(op):
    data = roce.build(sample(op), **FLOW)
    for n in range(len(data)):
        for check in (True, False):
            try:
                roce.parse(data[:n], **FLOW, check_icrc=check)
            except MalformedPacket as exc:
                assert exc.reason in roce.MALFORMED_REASONS
            else:
                assert not check, f"truncated to {n} passed the ICRC check"


def test_random_bytes_never_raise_anything_else():
    rng = random.Random(4791)
    ops = ALL_OPS + [0x15, 0x81, 0xFF]
    outcomes = {}
    for i in range(4000):
        n = rng.choice((rng.randrange(0, 16), rng.randrange(16, 80), rng.randrange(80, 400)))
        data = bytearray(rng.randbytes(n))
        if n and i % 2:      # steer half of them past the first checks
            data[0] = rng.choice(ops)
            if n > 1:
                data[1] &= 0xF0 if i % 4 == 1 else 0xFF
        try:
            roce.parse(bytes(data), **FLOW, check_icrc=bool(i % 8 == 0))
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except MalformedPacket as exc:
            assert exc.reason in roce.MALFORMED_REASONS
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
    # The fuzz reached the deep paths, not only the length check.
    for key in ("ok", "short", "bad_icrc", "bad_tver", "unknown_opcode", "len_mismatch",
                "bad_pad"):
        assert outcomes.get(key), (key, outcomes)


# ---- PSN, AETH, timers ----------------------------------------------------------------------
def test_psn_arithmetic_wraps():
    M = 1 << 24
    assert roce.psn_add(M - 1, 1) == 0
    assert roce.psn_add(0, -1) == M - 1
    assert roce.psn_add(M - 3, 10) == 7
    assert roce.psn_diff(0, M - 1) == 1
    assert roce.psn_diff(M - 1, 0) == -1
    assert roce.psn_diff(1 << 23, 0) == 1 << 23          # the range is (-2^23, 2^23]
    assert roce.psn_diff(0, 1 << 23) == 1 << 23
    assert roce.psn_diff((1 << 23) + 1, 0) == -(1 << 23) + 1
    assert roce.psn_lt(M - 1, 0) and roce.psn_gt(0, M - 1)
    assert roce.psn_le(5, 5) and roce.psn_ge(5, 5) and not roce.psn_lt(5, 5)
    rng = random.Random(7)
    for _ in range(2000):
        a = rng.randrange(M)
        n = rng.randrange(-(1 << 23) + 1, (1 << 23) + 1)
        assert roce.psn_diff(roce.psn_add(a, n), a) == n


def test_aeth_syndromes():
    assert roce.aeth_ack() == 0x1F
    assert roce.classify_aeth(roce.aeth_ack()) == (AethKind.ACK, 0x1F)
    assert roce.classify_aeth(roce.aeth_ack(3)) == (AethKind.ACK, 3)
    assert roce.aeth_rnr(0x12) == 0x32
    assert roce.classify_aeth(0x32) == (AethKind.RNR_NAK, 0x12)
    assert roce.aeth_nak(NakCode.PSN_SEQUENCE_ERROR) == 0x60
    assert roce.aeth_nak(NakCode.REMOTE_ACCESS_ERROR) == 0x62
    for code in NakCode:
        assert roce.classify_aeth(roce.aeth_nak(code)) == (AethKind.NAK, code)
    assert roce.classify_aeth(0x45)[0] is AethKind.RESERVED
    assert roce.classify_aeth(0x80)[0] is AethKind.RESERVED
    for s in range(256):
        roce.classify_aeth(s)
    assert (roce.AETH_ACK, roce.AETH_RNR, roce.AETH_NAK) == (0, 1, 3)
    assert (roce.NAK_PSN_SEQUENCE, roce.NAK_INVALID_REQUEST, roce.NAK_REMOTE_ACCESS,
            roce.NAK_REMOTE_OPERATIONAL, roce.NAK_INVALID_RD_REQUEST) == (0, 1, 2, 3, 4)
    for bad in (lambda: roce.aeth_ack(32), lambda: roce.aeth_rnr(-1), lambda: roce.aeth_nak(32)):
        with pytest.raises(ValueError):
            bad()


def test_rnr_timer_and_ack_timeout():
    t = roce.RNR_TIMER_US
    assert len(t) == 32 and t[0] == 655360 and t[1] == 10 and t[31] == 491520
    assert t[14] == 1280 and t[25] == 61440
    assert all(a < b for a, b in zip(t[1:], t[2:], strict=False))
    assert roce.timeout_seconds(0) is None
    assert roce.timeout_seconds(1) == pytest.approx(8.192e-6)
    assert roce.timeout_seconds(14) == pytest.approx(0.067108864)
    assert roce.timeout_seconds(31) == pytest.approx(8796.093022208)
    with pytest.raises(ValueError):
        roce.timeout_seconds(32)


# ---- scapy as the oracle --------------------------------------------------------------------
@pytest.fixture(scope="module")
def scapy():
    try:
        from scapy.contrib import roce as sroce
        from scapy.layers import inet, inet6
        from scapy.packet import Raw
    except Exception as exc:  # any import failure means "no oracle"
        msg = f"scapy not importable ({exc!r}); pip install 'rnicd[test]'"
        print(msg)
        pytest.skip(msg)
    return dict(BTH=sroce.BTH, AETH=sroce.AETH, IP=inet.IP, UDP=inet.UDP,
                IPv6=inet6.IPv6, Raw=Raw)


def independent_ext(info, data: bytes) -> dict:
    """Decode the extended headers with hand-written offsets (not roce.py's structs)."""
    out, off = {}, 12

    def take(n):
        nonlocal off
        v = int.from_bytes(data[off:off + n], "big")
        off += n
        return v

    for h in info.ext:
        if h is Hdr.XRCETH:                 # Annex A14.4.2.1: Resv8 | XRCSRQ(24)
            out["xrc_srqn"] = take(4) & 0xFFFFFF
        elif h is Hdr.DETH:
            out["deth_qkey"] = take(4)
            out["deth_src_qp"] = take(4) & 0xFFFFFF
        elif h is Hdr.RETH:
            out.update(reth_va=take(8), reth_rkey=take(4), reth_len=take(4))
        elif h is Hdr.ATOMICETH:
            out.update(atomic_va=take(8), atomic_rkey=take(4), atomic_swap_add=take(8),
                       atomic_compare=take(8))
        elif h is Hdr.AETH:
            out.update(aeth_syndrome=take(1), aeth_msn=take(3))
        elif h is Hdr.ATOMICACKETH:
            out["atomic_orig"] = take(8)
        elif h is Hdr.IMMDT:
            out["imm"] = take(4)
        elif h is Hdr.IETH:
            out["ieth_rkey"] = take(4)
    return out


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: OPCODES[op].name)
def test_scapy_dissects_ours(scapy, op):
    pkt = sample(op)
    data = roce.build(pkt, **FLOW)
    b = scapy["BTH"](data)
    assert b.opcode == op
    assert (b.solicited, b.migreq, b.version, b.pkey) == (1, 1, 0, 0x8001)
    assert (b.dqpn, b.ackreq, b.psn) == (0xC0FFEE, 1, 0xFFFFFE)
    assert (b.fecn, b.becn, b.resv6, b.resv7) == (0, 0, 0, 0)
    assert b.padcount == -len(pkt.payload) % 4
    expect = {k: v for k, v in ext_fields(pkt).items() if v is not None}
    assert independent_ext(OPCODES[op], data) == expect
    if OPCODES[op].aeth:
        a = scapy["AETH"](data[12:16])
        assert (a.syndrome, a.msn) == (pkt.aeth_syndrome, pkt.aeth_msn)
    hl = 12 + OPCODES[op].header_len
    assert data[hl:hl + len(pkt.payload)] == pkt.payload
    assert data[hl + len(pkt.payload):-4] == bytes(-len(pkt.payload) % 4)

    # scapy's own ICRC over our packet inside IPv4 (ID 0, DF) / UDP 4791 equals ours.
    s = scapy
    wire = bytes(s["IP"](src=SRC, dst=DST, flags="DF", id=0)
                 / s["UDP"](sport=SPORT, dport=4791) / s["Raw"](data))
    redissected = s["IP"](wire)
    assert redissected[s["BTH"]].compute_icrc(None) == data[-4:]


def scapy_packet(s, rng, v6=False, ip_id=0):
    op = rng.choice(ALL_OPS)
    info = OPCODES[op]
    ext = b"".join(rng.randbytes(HEADER_LEN[h]) for h in info.ext)
    n = rng.randrange(0, 300) if info.has_payload and info.is_last else \
        (rng.choice((0, 256)) if info.has_payload else 0)
    pad = -n % 4
    layer3 = (s["IPv6"](src="2001:db8::1", dst="2001:db8::2", tc=rng.randrange(256),
                        fl=rng.randrange(1 << 20), hlim=rng.randrange(256)) if v6 else
              s["IP"](src=SRC, dst=DST, flags="DF", id=ip_id, tos=rng.randrange(256),
                      ttl=rng.randrange(256)))
    p = (layer3 / s["UDP"](sport=SPORT, dport=4791)
         / s["BTH"](opcode=op, solicited=rng.randrange(2), migreq=rng.randrange(2),
                    padcount=pad, pkey=rng.randrange(1 << 16), fecn=rng.randrange(2),
                    becn=rng.randrange(2), resv6=rng.randrange(64), dqpn=rng.randrange(1 << 24),
                    ackreq=rng.randrange(2), resv7=rng.randrange(128), psn=rng.randrange(1 << 24))
         / s["Raw"](ext + rng.randbytes(n) + bytes(pad)))
    return p, bytes(p)


def test_our_icrc_equals_scapys(scapy):
    rng = random.Random(17)
    for i in range(300):
        ip_id = 0 if i % 3 else rng.randrange(1 << 16)
        _p, wire = scapy_packet(scapy, rng, ip_id=ip_id)
        udp_payload = wire[28:]
        (want,) = struct.unpack("<I", udp_payload[-4:])
        assert roce.icrc(udp_payload[:-4], SRC, DST, SPORT, ip_id=ip_id) == want
        got = roce.parse(udp_payload, **FLOW, ip_id=ip_id)
        assert got.psn == scapy["BTH"](udp_payload).psn
        if ip_id:
            assert reason(udp_payload) == "bad_icrc"   # the IPv4 ID is covered by the ICRC


def test_our_icrc_equals_scapys_ipv6(scapy):
    rng = random.Random(23)
    src = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    for _ in range(100):
        _p, wire = scapy_packet(scapy, rng, v6=True)
        udp_payload = wire[48:]
        (want,) = struct.unpack("<I", udp_payload[-4:])
        assert roce.icrc(udp_payload[:-4], src, dst, SPORT) == want
        roce.parse(udp_payload, src_ip=src, dst_ip=dst, sport=SPORT)


def test_ipv4_mapped_gid_means_ipv4():
    mapped = lambda a: b"\0" * 10 + b"\xff\xff" + socket.inet_aton(a)  # noqa: E731
    data = roce.build(sample(Opcode.RC_SEND_ONLY), **FLOW)
    roce.parse(data, src_ip=mapped(SRC), dst_ip=mapped(DST), sport=SPORT)
    roce.parse(data, src_ip="::ffff:" + SRC, dst_ip=DST, sport=SPORT)
    with pytest.raises(ValueError):
        roce.icrc(data[:-4], SRC, b"\x20\x01" + bytes(14), SPORT)
    with pytest.raises(ValueError):
        roce.icrc(data[:-4], "1.2.3", DST, SPORT)


def test_xrceth_layout():
    """Annex A14.4.2.1: XRCETH = Resv8 | XRCSRQ(24), right after the BTH, before the RETH."""
    pkt = sample(Opcode.XRC_RDMA_WRITE_FIRST, xrc_srqn=0x00ABCD)
    data = bytearray(roce.build(pkt, **FLOW))
    assert data[12:16] == bytes.fromhex("0000abcd")
    assert data[16:24] == pkt.reth_va.to_bytes(8, "big")
    data[12] = 0xFF                          # reserved bits: ignored on receive
    got = roce.parse(bytes(data), check_icrc=False)
    assert got.xrc_srqn == 0x00ABCD and got.reth_rkey == pkt.reth_rkey
    with pytest.raises(ValueError, match="xrc_srqn"):
        roce.build(sample(Opcode.XRC_SEND_ONLY, xrc_srqn=1 << 24), **FLOW)
    with pytest.raises(ValueError, match="xrc_srqn"):
        roce.build(sample(Opcode.XRC_SEND_ONLY, xrc_srqn=None), **FLOW)
    # responses carry none (A14.4.2): an XRC ACK is BTH + AETH, as RC's
    assert roce.wire_len(Opcode.XRC_ACKNOWLEDGE, 0) == roce.wire_len(Opcode.RC_ACKNOWLEDGE, 0)


def test_scapy_checks_the_data_planes_send_with_invalidate(scapy):
    """SEND with Invalidate as the data plane (sq.c) builds it: the IETH (9.3.9) on the LAST
    or ONLY packet only, SE there, and an ICRC scapy agrees with."""
    from rc_harness import send_with_inv_datagrams

    s = scapy
    got = []
    for data in send_with_inv_datagrams(rkey=0xA5A5A5A5, sizes=(13, 600)):
        b = s["BTH"](data)
        got.append((b.opcode, b.solicited, b.padcount, len(data)))
        if b.opcode in (Opcode.RC_SEND_LAST_WITH_INVALIDATE, Opcode.RC_SEND_ONLY_WITH_INVALIDATE):
            assert int.from_bytes(data[12:16], "big") == 0xA5A5A5A5
            assert roce.parse(data, src_ip="127.0.0.1", dst_ip="127.0.0.2", sport=4791,
                              dport=4791).ieth_rkey == 0xA5A5A5A5
        wire = bytes(s["IP"](src="127.0.0.1", dst="127.0.0.2", flags="DF", id=0)
                     / s["UDP"](sport=4791, dport=4791) / s["Raw"](data))
        assert s["IP"](wire)[s["BTH"]].compute_icrc(None) == data[-4:]
    O = Opcode
    # 13 bytes: ONLY (IETH, 3 pad bytes); 600 bytes at MTU 256: FIRST, MIDDLE, LAST (IETH)
    assert got == [(O.RC_SEND_ONLY_WITH_INVALIDATE, 1, 3, 12 + 4 + 16 + 4),
                   (O.RC_SEND_FIRST, 0, 0, 12 + 256 + 4), (O.RC_SEND_MIDDLE, 0, 0, 12 + 256 + 4),
                   (O.RC_SEND_LAST_WITH_INVALIDATE, 1, 0, 12 + 4 + 88 + 4)]

"""The C opcode table (native/include/rnic_opcodes.h, rnic_op_table) against the Python one
(rnicd/wire/opcodes.py), entry by entry over all 256 opcode bytes, so that the two can never
disagree; and the C header writer (rnic_hdr_build) byte for byte against wire/roce.py's."""
import random

import pytest

from rnicd.native import ffi, lib
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import QPType

HDR_BIT = {h: getattr(lib, f"RNIC_HDR_{h.name}") for h in op.Hdr}
HDR_LEN = {h: getattr(lib, f"RNIC_{h.name}_LEN") for h in op.Hdr}
KIND = {k: getattr(lib, f"RNIC_KIND_{k.name}") for k in op.Kind}
POSITION = {op.Position.FIRST: lib.RNIC_OPF_FIRST, op.Position.MIDDLE: 0,
            op.Position.LAST: lib.RNIC_OPF_LAST,
            op.Position.ONLY: lib.RNIC_OPF_FIRST | lib.RNIC_OPF_LAST}
POS_BITS = lib.RNIC_OPF_FIRST | lib.RNIC_OPF_LAST


def qp_type_bits(transport: op.Transport) -> int:
    return sum(1 << int(t) for t, tr in op.QPTYPE_TRANSPORT.items() if tr == transport)


def test_header_lengths_and_bth_are_the_wire_modules():
    assert lib.RNIC_BTH_LEN == op.BTH_LEN and lib.RNIC_ICRC_LEN == op.ICRC_LEN
    for h, n in op.HEADER_LEN.items():
        assert HDR_LEN[h] == n, h
    # the header bits are in wire order, as op.Hdr lists them
    bits = [HDR_BIT[h] for h in op.Hdr]
    assert bits == sorted(bits) and len(set(bits)) == len(bits)


def test_named_opcodes_compose_to_the_python_ones():
    for code in op.Opcode:
        transport, _, name = code.name.partition("_")
        c = getattr(lib, f"RNIC_OPT_{transport}") | getattr(lib, f"RNIC_OP_{name}")
        assert c == code, code.name
    assert lib.RNIC_OPT_MASK == 0xE0 and lib.RNIC_OP_MASK == 0x1F


@pytest.mark.parametrize("code", range(256))
def test_table_entry_matches(code):
    e = lib.rnic_op_table[code]
    info = op.OPCODES.get(code)
    if info is None:
        assert (e.flags, e.kind, e.hdrs, e.hdr_len, e.qp_types) == (0, 0, 0, 0, 0)
        return
    assert e.flags & lib.RNIC_OPF_VALID
    assert e.kind == KIND[info.kind]
    assert e.hdrs == sum(HDR_BIT[h] for h in info.ext)
    assert e.hdr_len == info.header_len
    assert e.flags & POS_BITS == POSITION[info.position]
    assert bool(e.flags & lib.RNIC_OPF_FIRST) == info.is_first
    assert bool(e.flags & lib.RNIC_OPF_LAST) == info.is_last
    assert bool(e.flags & lib.RNIC_OPF_PAYLOAD) == info.has_payload
    assert bool(e.flags & lib.RNIC_OPF_REQUEST) == info.is_request
    assert e.qp_types == qp_type_bits(info.transport)
    assert code & lib.RNIC_OPT_MASK == info.transport << 5


def test_qp_type_bits_are_the_verbs_enum():
    assert lib.RNIC_QPT_BIT_RC == 1 << QPType.IBV_QPT_RC
    assert lib.RNIC_QPT_BIT_UC == 1 << QPType.IBV_QPT_UC
    assert lib.RNIC_QPT_BIT_UD == 1 << QPType.IBV_QPT_UD
    assert lib.RNIC_QPT_BIT_XRC == (1 << QPType.IBV_QPT_XRC_SEND | 1 << QPType.IBV_QPT_XRC_RECV)


# ---- rnic_hdr_build: the C header writer, byte-exact against wire/roce.py's build --------

def _fields(rng, code):
    r = rng.getrandbits
    return dict(opcode=code, se=bool(r(1)), ackreq=bool(r(1)), dest_qp=r(24), psn=r(24),
                xrc_srqn=r(24), deth_qkey=r(32), deth_src_qp=r(24), reth_va=r(64),
                reth_rkey=r(32), reth_len=r(32), atomic_va=r(64), atomic_rkey=r(32),
                atomic_swap_add=r(64), atomic_compare=r(64), atomic_orig=r(64),
                aeth_syndrome=r(8), aeth_msn=r(24), imm=r(32), ieth_rkey=r(32))


def _c_header(f) -> bytes:
    info = op.OPCODES[f["opcode"]]
    h = ffi.new("struct rnic_hdr *")
    h.opcode, h.se, h.ackreq, h.dest_qp, h.psn = (
        f["opcode"], f["se"], f["ackreq"], f["dest_qp"], f["psn"])
    h.xrc_srqn, h.qkey, h.src_qp, h.msn, h.syndrome = (
        f["xrc_srqn"], f["deth_qkey"], f["deth_src_qp"], f["aeth_msn"], f["aeth_syndrome"])
    h.orig = f["atomic_orig"]
    if info.atomiceth:
        h.va, h.rkey, h.swap_add, h.compare = (
            f["atomic_va"], f["atomic_rkey"], f["atomic_swap_add"], f["atomic_compare"])
    else:
        h.va, h.rkey, h.dma_len = f["reth_va"], f["reth_rkey"], f["reth_len"]
    h.imm = f["ieth_rkey"] if info.ieth else f["imm"]
    out = ffi.new("uint8_t[]", 128)
    n = lib.rnic_hdr_build(out, h)
    return bytes(ffi.buffer(out, n))


@pytest.mark.parametrize("code", sorted(op.OPCODES))
def test_hdr_build_matches_python_builder(code):
    rng = random.Random(code)
    for _ in range(20):
        f = _fields(rng, code)
        info = op.OPCODES[code]
        want = roce.build(roce.Packet(**f), b"", src_ip="10.0.0.1", dst_ip="10.0.0.2",
                          sport=49152)[:op.BTH_LEN + info.header_len]
        assert _c_header(f) == want


def test_hdr_build_pad_and_unknown_opcodes():
    h = ffi.new("struct rnic_hdr *")
    out = ffi.new("uint8_t[]", 128)
    h.opcode, h.pad, h.se = op.Opcode.RC_SEND_ONLY, 3, 1
    assert lib.rnic_hdr_build(out, h) == op.BTH_LEN
    assert out[1] == 0x80 | 3 << 4 and bytes(out[2:4]) == b"\xff\xff"
    for code in (0x15, 0x40, 0x81, 0xFF):       # not in the table: nothing written
        h.opcode = code
        assert lib.rnic_hdr_build(out, h) == 0

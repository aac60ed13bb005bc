"""The C opcode table (native/include/rnic_opcodes.h, rnic_op_table) against the Python one
(rnicd/wire/opcodes.py), entry by entry over all 256 opcode bytes: the two can never
disagree."""
import pytest

from rnicd.native import lib
from rnicd.wire import opcodes as op
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

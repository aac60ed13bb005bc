"""BTH opcodes as a table: opcode -> headers present, position, kind (IBTA vol 1 9.2).

The opcode byte is transport prefix (bits 7..5: RC 000, UC 001, RD 010, UD 011) plus a 5-bit
operation (bits 4..0). XRC (prefix 101, IBTA Annex A14) has RC's operations, and every XRC
request carries an XRCETH right after the BTH. RD is not implemented; CNP (0x81, Annex A17) is
not in the table either, so parse() reports them as "unknown_opcode".
"""
from dataclasses import dataclass
from enum import Enum, IntEnum

from .abi import QPType


class Transport(IntEnum):
    """BTH opcode bits 7..5 (IBTA 9.2)."""
    RC = 0
    UC = 1
    RD = 2
    UD = 3
    XRC = 5     # Annex A14.4.1: transport bits 101



QPTYPE_TRANSPORT = {
    QPType.IBV_QPT_RC: Transport.RC,
    QPType.IBV_QPT_UC: Transport.UC,
    QPType.IBV_QPT_UD: Transport.UD,
    QPType.IBV_QPT_XRC_SEND: Transport.XRC,
    QPType.IBV_QPT_XRC_RECV: Transport.XRC,
}


class Kind(Enum):
    SEND = "send"
    WRITE = "write"
    READ_REQ = "read_req"
    READ_RESP = "read_resp"
    ACK = "ack"
    ATOMIC = "atomic"
    ATOMIC_ACK = "atomic_ack"


class Position(Enum):
    """Place of a packet in its message (IBTA 9.4: First/Middle/Last/Only)."""
    FIRST = "first"
    MIDDLE = "middle"
    LAST = "last"
    ONLY = "only"


class Hdr(Enum):
    """Extended transport headers, in the order they follow the BTH (IBTA 9.2)."""
    XRCETH = "xrceth"   # Annex A14.4.2: first after the BTH (never with a DETH)
    DETH = "deth"
    RETH = "reth"
    ATOMICETH = "atomiceth"
    AETH = "aeth"
    ATOMICACKETH = "atomicacketh"
    IMMDT = "immdt"
    IETH = "ieth"


BTH_LEN = 12  # IBTA 9.3.1
ICRC_LEN = 4  # IBTA 7.8.1, Annex A17
# Extended header lengths in bytes (IBTA 9.3.3-9.3.9); roce.py checks its structs against these.
HEADER_LEN = {
    Hdr.XRCETH: 4, Hdr.DETH: 8, Hdr.RETH: 16, Hdr.ATOMICETH: 28, Hdr.AETH: 4,
    Hdr.ATOMICACKETH: 8, Hdr.IMMDT: 4, Hdr.IETH: 4,
}
_WIRE_ORDER = tuple(Hdr)


class Opcode(IntEnum):
    RC_SEND_FIRST = 0x00
    RC_SEND_MIDDLE = 0x01
    RC_SEND_LAST = 0x02
    RC_SEND_LAST_WITH_IMMEDIATE = 0x03
    RC_SEND_ONLY = 0x04
    RC_SEND_ONLY_WITH_IMMEDIATE = 0x05
    RC_RDMA_WRITE_FIRST = 0x06
    RC_RDMA_WRITE_MIDDLE = 0x07
    RC_RDMA_WRITE_LAST = 0x08
    RC_RDMA_WRITE_LAST_WITH_IMMEDIATE = 0x09
    RC_RDMA_WRITE_ONLY = 0x0A
    RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE = 0x0B
    RC_RDMA_READ_REQUEST = 0x0C
    RC_RDMA_READ_RESPONSE_FIRST = 0x0D
    RC_RDMA_READ_RESPONSE_MIDDLE = 0x0E
    RC_RDMA_READ_RESPONSE_LAST = 0x0F
    RC_RDMA_READ_RESPONSE_ONLY = 0x10
    RC_ACKNOWLEDGE = 0x11
    RC_ATOMIC_ACKNOWLEDGE = 0x12
    RC_COMPARE_SWAP = 0x13
    RC_FETCH_ADD = 0x14
    RC_SEND_LAST_WITH_INVALIDATE = 0x16
    RC_SEND_ONLY_WITH_INVALIDATE = 0x17
    UC_SEND_FIRST = 0x20
    UC_SEND_MIDDLE = 0x21
    UC_SEND_LAST = 0x22
    UC_SEND_LAST_WITH_IMMEDIATE = 0x23
    UC_SEND_ONLY = 0x24
    UC_SEND_ONLY_WITH_IMMEDIATE = 0x25
    UC_RDMA_WRITE_FIRST = 0x26
    UC_RDMA_WRITE_MIDDLE = 0x27
    UC_RDMA_WRITE_LAST = 0x28
    UC_RDMA_WRITE_LAST_WITH_IMMEDIATE = 0x29
    UC_RDMA_WRITE_ONLY = 0x2A
    UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE = 0x2B
    UD_SEND_ONLY = 0x64
    UD_SEND_ONLY_WITH_IMMEDIATE = 0x65
    # Annex A14.4.1: XRC has RC's operations under transport bits 101 (0xA0 | RC opcode)
    XRC_SEND_FIRST = 0xA0
    XRC_SEND_MIDDLE = 0xA1
    XRC_SEND_LAST = 0xA2
    XRC_SEND_LAST_WITH_IMMEDIATE = 0xA3
    XRC_SEND_ONLY = 0xA4
    XRC_SEND_ONLY_WITH_IMMEDIATE = 0xA5
    XRC_RDMA_WRITE_FIRST = 0xA6
    XRC_RDMA_WRITE_MIDDLE = 0xA7
    XRC_RDMA_WRITE_LAST = 0xA8
    XRC_RDMA_WRITE_LAST_WITH_IMMEDIATE = 0xA9
    XRC_RDMA_WRITE_ONLY = 0xAA
    XRC_RDMA_WRITE_ONLY_WITH_IMMEDIATE = 0xAB
    XRC_RDMA_READ_REQUEST = 0xAC
    XRC_RDMA_READ_RESPONSE_FIRST = 0xAD
    XRC_RDMA_READ_RESPONSE_MIDDLE = 0xAE
    XRC_RDMA_READ_RESPONSE_LAST = 0xAF
    XRC_RDMA_READ_RESPONSE_ONLY = 0xB0
    XRC_ACKNOWLEDGE = 0xB1
    XRC_ATOMIC_ACKNOWLEDGE = 0xB2
    XRC_COMPARE_SWAP = 0xB3
    XRC_FETCH_ADD = 0xB4
    XRC_SEND_LAST_WITH_INVALIDATE = 0xB6
    XRC_SEND_ONLY_WITH_INVALIDATE = 0xB7


@dataclass(frozen=True, slots=True)
class OpInfo:
    opcode: Opcode
    name: str
    transport: Transport
    kind: Kind
    position: Position
    ext: tuple          # Hdr members present, in wire order
    reth: bool
    aeth: bool
    atomiceth: bool
    atomicacketh: bool
    immdt: bool
    ieth: bool
    deth: bool
    xrceth: bool
    is_first: bool      # FIRST or ONLY
    is_last: bool       # LAST or ONLY
    is_request: bool    # requester -> responder (SEND, WRITE, READ_REQ, ATOMIC)
    has_payload: bool
    header_len: int     # bytes of extended headers after the BTH


# Low 5 bits -> (kind, position, extended headers): the IBTA 9.2 opcode table.
_OPS = {
    0x00: (Kind.SEND, Position.FIRST, ()),
    0x01: (Kind.SEND, Position.MIDDLE, ()),
    0x02: (Kind.SEND, Position.LAST, ()),
    0x03: (Kind.SEND, Position.LAST, (Hdr.IMMDT,)),
    0x04: (Kind.SEND, Position.ONLY, ()),
    0x05: (Kind.SEND, Position.ONLY, (Hdr.IMMDT,)),
    0x06: (Kind.WRITE, Position.FIRST, (Hdr.RETH,)),
    0x07: (Kind.WRITE, Position.MIDDLE, ()),
    0x08: (Kind.WRITE, Position.LAST, ()),
    0x09: (Kind.WRITE, Position.LAST, (Hdr.IMMDT,)),
    0x0A: (Kind.WRITE, Position.ONLY, (Hdr.RETH,)),
    0x0B: (Kind.WRITE, Position.ONLY, (Hdr.RETH, Hdr.IMMDT)),
    0x0C: (Kind.READ_REQ, Position.ONLY, (Hdr.RETH,)),
    0x0D: (Kind.READ_RESP, Position.FIRST, (Hdr.AETH,)),
    0x0E: (Kind.READ_RESP, Position.MIDDLE, ()),
    0x0F: (Kind.READ_RESP, Position.LAST, (Hdr.AETH,)),
    0x10: (Kind.READ_RESP, Position.ONLY, (Hdr.AETH,)),
    0x11: (Kind.ACK, Position.ONLY, (Hdr.AETH,)),
    0x12: (Kind.ATOMIC_ACK, Position.ONLY, (Hdr.AETH, Hdr.ATOMICACKETH)),
    0x13: (Kind.ATOMIC, Position.ONLY, (Hdr.ATOMICETH,)),
    0x14: (Kind.ATOMIC, Position.ONLY, (Hdr.ATOMICETH,)),
    0x16: (Kind.SEND, Position.LAST, (Hdr.IETH,)),
    0x17: (Kind.SEND, Position.ONLY, (Hdr.IETH,)),
}
_PAYLOAD_KINDS = (Kind.SEND, Kind.WRITE, Kind.READ_RESP)
_REQUEST_KINDS = (Kind.SEND, Kind.WRITE, Kind.READ_REQ, Kind.ATOMIC)


def _info(op: Opcode) -> OpInfo:
    transport = Transport(op >> 5)
    kind, pos, ext = _OPS[op & 0x1F]
    if transport is Transport.UD:
        ext = (Hdr.DETH,) + ext  # IBTA 9.3.3: every UD packet carries a DETH
    if transport is Transport.XRC and kind in _REQUEST_KINDS:
        ext = (Hdr.XRCETH,) + ext   # A14.4.2: every XRC request names the XRC SRQ
    ext = tuple(h for h in _WIRE_ORDER if h in ext)
    return OpInfo(
        opcode=op, name=op.name, transport=transport, kind=kind, position=pos, ext=ext,
        reth=Hdr.RETH in ext, aeth=Hdr.AETH in ext, atomiceth=Hdr.ATOMICETH in ext,
        atomicacketh=Hdr.ATOMICACKETH in ext, immdt=Hdr.IMMDT in ext, ieth=Hdr.IETH in ext,
        deth=Hdr.DETH in ext, xrceth=Hdr.XRCETH in ext,
        is_first=pos in (Position.FIRST, Position.ONLY),
        is_last=pos in (Position.LAST, Position.ONLY),
        is_request=kind in _REQUEST_KINDS, has_payload=kind in _PAYLOAD_KINDS,
        header_len=sum(HEADER_LEN[h] for h in ext),
    )


OPCODES: dict[int, OpInfo] = {int(op): _info(op) for op in Opcode}


def _pick(name: str) -> Opcode:
    try:
        return Opcode[name]
    except KeyError:
        raise ValueError(f"no opcode {name}") from None


def send_opcode(position: Position, with_imm: bool = False, with_inv: bool = False,
                transport: Transport = Transport.RC) -> Opcode:
    """Opcode for one packet of a SEND (IBTA 9.4.1). Immediate/invalidate go on LAST/ONLY."""
    if with_imm and with_inv:
        raise ValueError("a SEND carries immediate data or an invalidate rkey, not both")
    suffix = "_WITH_IMMEDIATE" if with_imm else "_WITH_INVALIDATE" if with_inv else ""
    if suffix and position not in (Position.LAST, Position.ONLY):
        raise ValueError(f"{suffix[1:]} only on a LAST or ONLY packet")
    return _pick(f"{Transport(transport).name}_SEND_{position.name}{suffix}")


def write_opcode(position: Position, with_imm: bool = False,
                 transport: Transport = Transport.RC) -> Opcode:
    """Opcode for one packet of an RDMA WRITE (IBTA 9.4.2)."""
    suffix = "_WITH_IMMEDIATE" if with_imm else ""
    if suffix and position not in (Position.LAST, Position.ONLY):
        raise ValueError("WITH_IMMEDIATE only on a LAST or ONLY packet")
    return _pick(f"{Transport(transport).name}_RDMA_WRITE_{position.name}{suffix}")


def read_resp_opcode(position: Position, transport: Transport = Transport.RC) -> Opcode:
    """Opcode for one packet of an RDMA READ response (IBTA 9.4.3; RC and XRC)."""
    return _pick(f"{Transport(transport).name}_RDMA_READ_RESPONSE_{position.name}")


def position(k: int, count: int) -> Position:
    """Position of packet k of a message of `count` packets (IBTA 9.4 segmentation)."""
    if count == 1:
        return Position.ONLY
    if k == 0:
        return Position.FIRST
    return Position.LAST if k == count - 1 else Position.MIDDLE


def segments(length: int, mtu: int):
    """Split a message of `length` bytes into packets of at most `mtu` payload bytes.

    Yields (Position, offset, nbytes). A zero-length message is one ONLY packet (IBTA 9.4:
    every packet but the last carries exactly PMTU bytes).
    """
    if length < 0 or mtu <= 0:
        raise ValueError("length must be >= 0 and mtu > 0")
    count = max(1, -(-length // mtu))
    for i in range(count):
        off = i * mtu
        yield position(i, count), off, min(mtu, length - off)

"""InfiniBand Communication Management MADs (IBTA vol 1 ch. 12, MAD format 13.4), as RoCEv2
carries them (Annex A17).

A CM MAD travels as the payload of a UD SEND to QP1 (the GSI) with DETH Q_Key 0x80010000
(IBTA 13.5.1 / Annex A17). The payload is one 256-byte MAD: the 24-byte common MAD header
(13.4.2) followed by 232 bytes of CM message data (12.6). This module lays out and checks those
256 bytes; it does no I/O. unpack() treats its input as untrusted: the only exception it raises
for bad bytes is MalformedMAD, whose `reason` is a short token usable as a counter-name suffix
(see MALFORMED_REASONS).

Every message field is one table entry `Field(name, byte, bit, width)`: `byte` is the offset in
the CM message data (IBTA tables 106-113 and 119-120 number bytes from the end of the MAD
header), `bit` the first bit counted from the most significant bit of that byte (IBTA bit
numbering), `width` in bits. Fields are big-endian and may span bytes. Byte-string fields
(GIDs, ARI, private data) are byte-aligned; private data and ARI shorter than their field are
zero-padded on pack, and unpack returns the whole field.
"""
import struct
from dataclasses import dataclass, fields
from enum import IntEnum

# ---- constants (IBTA 13.4, 13.5.1, 16.7 / 12.6; Annex A17) ---------------------------------
MAD_LEN = 256               # 13.4.1: every MAD is 256 bytes
MAD_HDR_LEN = 24            # 13.4.2: common MAD header
CM_DATA_LEN = MAD_LEN - MAD_HDR_LEN   # 232 bytes of CM message data (12.6)
GSI_QPN = 1                 # 13.5.1: QP1, the General Services Interface
GSI_QKEY = 0x80010000       # 13.5.1 / Annex A17: the well-known Q_Key of QP1
BASE_VERSION = 1            # 13.4.2
CM_MGMT_CLASS = 0x07        # 13.4.4: Communication Management class
CM_CLASS_VERSION = 2        # 12.6: CM class version
METHOD_SEND = 0x03          # 13.4.5: CM messages use the Send method
_RESPONSE_BIT = 0x80        # 13.4.2: R bit, top bit of the method byte


class AttrID(IntEnum):
    """CM attribute IDs (IBTA 12.6, table 105)."""
    CLASS_PORT_INFO = 0x0001
    REQ = 0x0010
    MRA = 0x0011
    REJ = 0x0012
    REP = 0x0013
    RTU = 0x0014
    DREQ = 0x0015
    DREP = 0x0016
    SIDR_REQ = 0x0017
    SIDR_REP = 0x0018
    LAP = 0x0019
    APR = 0x001A


class TransportServiceType(IntEnum):
    """REQ Transport Service Type (IBTA 12.6.5)."""
    RC = 0
    UC = 1
    RD = 2
    XRC = 3     # with Extended Transport Type 1 (IBTA Annex A14)


class MsgRef(IntEnum):
    """REJ Message REJected / MRA Message MRAed codes (IBTA 12.6.7, 12.6.6)."""
    REQ = 0
    REP = 1
    OTHER = 2   # REJ: "other"; MRA: LAP


class SidrStatus(IntEnum):
    """SIDR_REP Status (IBTA 12.6 table 120, 12.11.2)."""
    VALID_QPN = 0               # the QPN and Q_Key are valid
    SID_NOT_SUPPORTED = 1       # no service listens on the ServiceID
    REJECTED = 2                # the service provider rejected the request
    NO_QP = 3                   # the service has no QP to offer
    REDIRECT = 4                # ClassPortInfo in the additional information
    UNSUPPORTED_VERSION = 5     # CM class version not supported


class RejReason(IntEnum):
    """Some REJ reason codes (IBTA 12.6.7.2, table 109); the field is any 16-bit value."""
    NO_QP = 1
    NO_EEC = 2
    NO_RESOURCES = 3
    TIMEOUT = 4
    UNSUPPORTED = 5
    INVALID_COMM_ID = 6
    INVALID_COMM_INSTANCE = 7
    INVALID_SERVICE_ID = 8
    INVALID_TRANSPORT_TYPE = 9
    STALE_CONN = 10
    RDC_NOT_EXIST = 11
    INVALID_MTU = 26
    INSUFFICIENT_RESP_RESOURCES = 27
    CONSUMER_DEFINED = 28
    INVALID_RNR_RETRY = 29
    DUPLICATE_LOCAL_COMM_ID = 30
    INVALID_CLASS_VERSION = 31


# ---- common MAD header (IBTA 13.4.2, figure 145) -------------------------------------------
# BaseVersion | MgmtClass | ClassVersion | R+Method | Status(16) | ClassSpecific(16)
# | TransactionID(64) | AttributeID(16) | Reserved(16) | AttributeModifier(32)
MAD_HDR = struct.Struct("!BBBBHHQHHI")
if MAD_HDR.size != MAD_HDR_LEN:
    raise ImportError("MAD_HDR is not 24 bytes")


@dataclass(frozen=True, slots=True)
class MadHeader:
    base_version: int
    mgmt_class: int
    class_version: int
    method: int             # 7 bits, without the R bit
    response: bool          # R bit
    status: int
    class_specific: int
    transaction_id: int
    attribute_id: int
    attribute_modifier: int


class MalformedMAD(Exception):
    """256 bytes that are not a valid CM MAD; `reason` is a counter-name suffix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


MALFORMED_REASONS = ("short", "long", "bad_base_version", "bad_class", "bad_class_version",
                     "bad_method", "unknown_attribute", "unsupported_attribute",
                     "bad_reject_info_length", "bad_additional_info_length")


# ---- bit fields ----------------------------------------------------------------------------
def get_bits(buf, byte: int, bit: int, width: int) -> int:
    """Unsigned big-endian value of `width` bits starting `bit` bits (from the MSB) into
    buf[byte]."""
    start = byte * 8 + bit
    end = start + width                  # exclusive, in bits
    first, last = start // 8, (end + 7) // 8
    chunk = int.from_bytes(buf[first:last], "big")
    return (chunk >> (last * 8 - end)) & ((1 << width) - 1)


def put_bits(buf: bytearray, byte: int, bit: int, width: int, value: int) -> None:
    """Store `value` (must fit in `width` bits) at the position get_bits() reads."""
    start = byte * 8 + bit
    end = start + width
    first, last = start // 8, (end + 7) // 8
    shift = last * 8 - end
    mask = ((1 << width) - 1) << shift
    chunk = int.from_bytes(buf[first:last], "big")
    chunk = (chunk & ~mask) | (value << shift)
    buf[first:last] = chunk.to_bytes(last - first, "big")


INT, EXACT, PADDED = "int", "exact", "padded"   # Field.kind


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    byte: int           # offset in the CM message data (add MAD_HDR_LEN for the MAD offset)
    bit: int            # first bit, counted from the MSB of `byte`
    width: int          # bits
    kind: str = INT     # INT; EXACT bytes (GIDs); PADDED bytes (ARI, private data)

    @property
    def nbytes(self) -> int:
        return self.width // 8


def _b(name: str, byte: int, nbytes: int, kind: str = PADDED) -> Field:
    return Field(name, byte, 0, nbytes * 8, kind)


# ---- the messages (IBTA 12.6.5-12.6.11; SIDR: 12.6 tables 119-120); defaults as sent on RoCE ---
_GID0 = bytes(16)


@dataclass(frozen=True, slots=True)
class CmReq:
    """REQ, IBTA 12.6.5 table 106 (RD EECNs and the alternate path not carried)."""
    local_comm_id: int
    service_id: int
    local_qpn: int
    starting_psn: int
    local_ca_guid: int = 0
    local_qkey: int = 0
    responder_resources: int = 0
    initiator_depth: int = 0
    remote_cm_response_timeout: int = 0
    transport_service_type: int = TransportServiceType.RC
    end_to_end_flow_control: int = 0
    local_cm_response_timeout: int = 0
    retry_count: int = 0
    partition_key: int = 0xFFFF
    path_mtu: int = 0       # IBTA MTU enum: 1=256 .. 5=4096
    rdc_exists: int = 0
    rnr_retry_count: int = 0
    max_cm_retries: int = 0
    srq: int = 0
    extended_transport_type: int = 0    # 1: XRC (transport service type 3)
    primary_local_lid: int = 0xFFFF    # permissive LID: RoCE has no LIDs
    primary_remote_lid: int = 0xFFFF
    primary_local_gid: bytes = _GID0
    primary_remote_gid: bytes = _GID0
    primary_flow_label: int = 0
    primary_packet_rate: int = 0
    primary_traffic_class: int = 0
    primary_hop_limit: int = 0
    primary_sl: int = 0
    primary_subnet_local: int = 0
    primary_local_ack_timeout: int = 0
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmMra:
    """MRA, IBTA 12.6.6 table 107."""
    local_comm_id: int
    remote_comm_id: int
    message_mraed: int = MsgRef.REQ
    service_timeout: int = 0
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmRej:
    """REJ, IBTA 12.6.7 table 108."""
    local_comm_id: int
    remote_comm_id: int
    reason: int
    message_rejected: int = MsgRef.REQ
    reject_info_length: int = 0
    ari: bytes = b""
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmRep:
    """REP, IBTA 12.6.8 table 110 (RD local EECN not carried)."""
    local_comm_id: int
    remote_comm_id: int
    local_qpn: int
    starting_psn: int
    local_qkey: int = 0
    responder_resources: int = 0
    initiator_depth: int = 0
    target_ack_delay: int = 0
    failover_accepted: int = 0
    end_to_end_flow_control: int = 0
    rnr_retry_count: int = 0
    srq: int = 0
    local_ca_guid: int = 0
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmRtu:
    """RTU, IBTA 12.6.9 table 111."""
    local_comm_id: int
    remote_comm_id: int
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmDreq:
    """DREQ, IBTA 12.6.10 table 112."""
    local_comm_id: int
    remote_comm_id: int
    remote_qpn: int
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmDrep:
    """DREP, IBTA 12.6.11 table 113."""
    local_comm_id: int
    remote_comm_id: int
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmSidrReq:
    """SIDR_REQ, IBTA 12.6 table 119 (Service ID Resolution Request, 12.11)."""
    request_id: int
    service_id: int
    partition_key: int = 0xFFFF
    private_data: bytes = b""


@dataclass(frozen=True, slots=True)
class CmSidrRep:
    """SIDR_REP, IBTA 12.6 table 120 (Service ID Resolution Response, 12.11)."""
    request_id: int
    status: int
    service_id: int
    qpn: int = 0
    qkey: int = 0
    additional_info_length: int = 0
    additional_info: bytes = b""      # ClassPortInfo for status REDIRECT
    private_data: bytes = b""


_COMM_IDS = (Field("local_comm_id", 0, 0, 32), Field("remote_comm_id", 4, 0, 32))

# Field tables: offsets as in the IBTA message-content tables.
LAYOUTS: dict[type, tuple[AttrID, tuple[Field, ...]]] = {
    CmReq: (AttrID.REQ, (
        Field("local_comm_id", 0, 0, 32),
        Field("service_id", 8, 0, 64),
        Field("local_ca_guid", 16, 0, 64),
        Field("local_qkey", 28, 0, 32),
        Field("local_qpn", 32, 0, 24),
        Field("responder_resources", 35, 0, 8),
        Field("initiator_depth", 39, 0, 8),
        Field("remote_cm_response_timeout", 43, 0, 5),
        Field("transport_service_type", 43, 5, 2),
        Field("end_to_end_flow_control", 43, 7, 1),
        Field("starting_psn", 44, 0, 24),
        Field("local_cm_response_timeout", 47, 0, 5),
        Field("retry_count", 47, 5, 3),
        Field("partition_key", 48, 0, 16),
        Field("path_mtu", 50, 0, 4),
        Field("rdc_exists", 50, 4, 1),
        Field("rnr_retry_count", 50, 5, 3),
        Field("max_cm_retries", 51, 0, 4),
        Field("srq", 51, 4, 1),
        Field("extended_transport_type", 51, 5, 3),
        Field("primary_local_lid", 52, 0, 16),
        Field("primary_remote_lid", 54, 0, 16),
        _b("primary_local_gid", 56, 16, EXACT),
        _b("primary_remote_gid", 72, 16, EXACT),
        Field("primary_flow_label", 88, 0, 20),
        Field("primary_packet_rate", 91, 2, 6),
        Field("primary_traffic_class", 92, 0, 8),
        Field("primary_hop_limit", 93, 0, 8),
        Field("primary_sl", 94, 0, 4),
        Field("primary_subnet_local", 94, 4, 1),
        Field("primary_local_ack_timeout", 95, 0, 5),
        _b("private_data", 140, 92),
    )),
    CmMra: (AttrID.MRA, _COMM_IDS + (
        Field("message_mraed", 8, 0, 2),
        Field("service_timeout", 9, 0, 5),
        _b("private_data", 10, 222),
    )),
    CmRej: (AttrID.REJ, _COMM_IDS + (
        Field("message_rejected", 8, 0, 2),
        Field("reject_info_length", 9, 0, 7),
        Field("reason", 10, 0, 16),
        _b("ari", 12, 72),
        _b("private_data", 84, 148),
    )),
    CmRep: (AttrID.REP, _COMM_IDS + (
        Field("local_qkey", 8, 0, 32),
        Field("local_qpn", 12, 0, 24),
        Field("starting_psn", 20, 0, 24),
        Field("responder_resources", 24, 0, 8),
        Field("initiator_depth", 25, 0, 8),
        Field("target_ack_delay", 26, 0, 5),
        Field("failover_accepted", 26, 5, 2),
        Field("end_to_end_flow_control", 26, 7, 1),
        Field("rnr_retry_count", 27, 0, 3),
        Field("srq", 27, 3, 1),
        Field("local_ca_guid", 28, 0, 64),
        _b("private_data", 36, 196),
    )),
    CmRtu: (AttrID.RTU, _COMM_IDS + (_b("private_data", 8, 224),)),
    CmDreq: (AttrID.DREQ, _COMM_IDS + (
        Field("remote_qpn", 8, 0, 24),
        _b("private_data", 12, 220),
    )),
    CmDrep: (AttrID.DREP, _COMM_IDS + (_b("private_data", 8, 224),)),
    CmSidrReq: (AttrID.SIDR_REQ, (
        Field("request_id", 0, 0, 32),
        Field("partition_key", 4, 0, 16),
        Field("service_id", 8, 0, 64),
        _b("private_data", 16, 216),
    )),
    CmSidrRep: (AttrID.SIDR_REP, (
        Field("request_id", 0, 0, 32),
        Field("status", 4, 0, 8),
        Field("additional_info_length", 5, 0, 8),
        Field("qpn", 8, 0, 24),
        Field("service_id", 12, 0, 64),
        Field("qkey", 20, 0, 32),
        _b("additional_info", 24, 72),
        _b("private_data", 96, 136),
    )),
}
MESSAGES: dict[int, type] = {attr: cls for cls, (attr, _f) in LAYOUTS.items()}
ARI_LEN = 72   # IBTA 12.6.7: Additional Rejection Information, bytes
SIDR_INFO_LEN = 72   # IBTA 12.6 table 120: SIDR_REP Additional Information, bytes


def _check_layouts() -> None:
    for cls, (_attr, table) in LAYOUTS.items():
        if {f.name for f in table} != {f.name for f in fields(cls)}:
            raise ImportError(f"{cls.__name__}: field table and dataclass disagree")
        for f in table:
            if f.byte * 8 + f.bit + f.width > CM_DATA_LEN * 8 or not 0 <= f.bit < 8:
                raise ImportError(f"{cls.__name__}.{f.name} lies outside the CM data")
            if f.kind != INT and (f.bit or f.width % 8):
                raise ImportError(f"{cls.__name__}.{f.name}: byte fields are byte-aligned")


_check_layouts()


def private_data_len(cls: type) -> int:
    """Bytes of private data a message of this class carries (IBTA 12.6)."""
    return next(f.nbytes for f in LAYOUTS[cls][1] if f.name == "private_data")


# ---- pack / unpack -------------------------------------------------------------------------
def _int(v, bits: int, name: str) -> int:
    v = int(v)
    if not 0 <= v < (1 << bits):
        raise ValueError(f"{name}={v:#x} does not fit in {bits} bits")
    return v


def pack(msg, transaction_id: int, *, attribute_modifier: int = 0) -> bytes:
    """The 256-byte MAD (header + CM message, zero-padded) carrying `msg`, a Cm* message.
    Raises ValueError on a field that does not fit."""
    layout = LAYOUTS.get(type(msg))
    if layout is None:
        raise ValueError(f"not a CM message: {type(msg).__name__}")
    attr, table = layout
    buf = bytearray(MAD_LEN)
    MAD_HDR.pack_into(buf, 0, BASE_VERSION, CM_MGMT_CLASS, CM_CLASS_VERSION, METHOD_SEND, 0, 0,
                      _int(transaction_id, 64, "transaction_id"), attr, 0,
                      _int(attribute_modifier, 32, "attribute_modifier"))
    name = type(msg).__name__
    for f in table:
        v = getattr(msg, f.name)
        off = MAD_HDR_LEN + f.byte
        if f.kind == INT:
            put_bits(buf, off, f.bit, f.width, _int(v, f.width, f"{name}.{f.name}"))
            continue
        v = bytes(v)
        if len(v) > f.nbytes or (f.kind == EXACT and len(v) != f.nbytes):
            need = "exactly" if f.kind == EXACT else "at most"
            raise ValueError(f"{name}.{f.name} is {len(v)} bytes; {need} {f.nbytes} fit")
        buf[off:off + len(v)] = v
    if isinstance(msg, CmRej) and msg.reject_info_length > ARI_LEN:
        raise ValueError(f"reject_info_length {msg.reject_info_length} > {ARI_LEN}")
    if isinstance(msg, CmSidrRep) and msg.additional_info_length > SIDR_INFO_LEN:
        raise ValueError(f"additional_info_length {msg.additional_info_length} > "
                         f"{SIDR_INFO_LEN}")
    return bytes(buf)


def unpack_header(data) -> MadHeader:
    """Parse the common MAD header of untrusted bytes (any management class)."""
    untrusted = memoryview(data).cast("B")
    if len(untrusted) < MAD_HDR_LEN:
        raise MalformedMAD("short")
    base, mclass, cver, rmethod, status, cspec, tid, attr, _resv, amod = \
        MAD_HDR.unpack_from(untrusted)
    return MadHeader(base, mclass, cver, rmethod & ~_RESPONSE_BIT & 0xFF,
                     bool(rmethod & _RESPONSE_BIT), status, cspec, tid, attr, amod)


def unpack(data):
    """Parse an untrusted 256-byte CM MAD -> (MadHeader, Cm* message). Raises MalformedMAD
    and nothing else for bad bytes. Byte fields are copies."""
    untrusted = memoryview(data).cast("B")
    n = len(untrusted)
    if n < MAD_LEN:
        raise MalformedMAD("short")
    if n > MAD_LEN:
        raise MalformedMAD("long")
    hdr = unpack_header(untrusted)
    if hdr.base_version != BASE_VERSION:
        raise MalformedMAD("bad_base_version")
    if hdr.mgmt_class != CM_MGMT_CLASS:
        raise MalformedMAD("bad_class")
    if hdr.class_version != CM_CLASS_VERSION:
        raise MalformedMAD("bad_class_version")
    cls = MESSAGES.get(hdr.attribute_id)
    if cls is None:
        known = hdr.attribute_id in AttrID._value2member_map_
        raise MalformedMAD("unsupported_attribute" if known else "unknown_attribute")
    if hdr.method != METHOD_SEND or hdr.response:   # 12.6: CM messages are Send, R=0
        raise MalformedMAD("bad_method")
    values = {}
    for f in LAYOUTS[cls][1]:
        off = MAD_HDR_LEN + f.byte
        if f.kind == INT:
            values[f.name] = get_bits(untrusted, off, f.bit, f.width)
        else:
            values[f.name] = bytes(untrusted[off:off + f.nbytes])
    if cls is CmRej and values["reject_info_length"] > ARI_LEN:
        raise MalformedMAD("bad_reject_info_length")
    if cls is CmSidrRep and values["additional_info_length"] > SIDR_INFO_LEN:
        raise MalformedMAD("bad_additional_info_length")
    return hdr, cls(**values)

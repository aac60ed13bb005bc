"""rdma_cm's conventions on top of IB CM (as librdmacm and the Linux rdma_cm module use them),
so that a connection looks on the wire like one made by a real RoCE NIC.

- Service ID: an rdma_cm port in port space PS (RDMA_PS_TCP = 0x0106, RDMA_PS_UDP = 0x0111,
  RDMA_PS_IB = 0x013F, RDMA_PS_IPOIB = 0x0002) is the IB Service ID 0x0000_0000_PPPP_pppp with
  PS in bits 16..31 and the port in bits 0..15. TCP and IB connect RC QPs (REQ/REP/RTU);
  UDP and IPoIB resolve a UD QP with SIDR (SIDR_REQ/SIDR_REP, IBTA 12.11).
- The Q_Key of RDMA_PS_UDP (and RDMA_PS_IB UD) QPs is RDMA_UDP_QKEY, 0x01234567: both sides
  set it on their UD QPs, the SIDR_REP carries it, rdma_post_ud_send sends with it.
- REQ and SIDR_REQ private data start with the 36-byte "CMA header": version 0, the IP version
  in the high nibble of byte 1, the source port, then the source and destination addresses in
  16 bytes each (IPv4: 12 zero bytes, then the address). The consumer's private data follows,
  so a consumer gets 92 - 36 = 56 bytes in a REQ, 216 - 36 = 180 in a SIDR_REQ.
- rdma_cm event types (enum rdma_cm_event_type in librdmacm's rdma_cma.h).
"""
import ipaddress
import struct
from enum import IntEnum

RDMA_PS_IPOIB = 0x0002
RDMA_PS_TCP = 0x0106
RDMA_PS_UDP = 0x0111
RDMA_PS_IB = 0x013F
PORT_SPACES = {RDMA_PS_IPOIB: "RDMA_PS_IPOIB", RDMA_PS_TCP: "RDMA_PS_TCP",
               RDMA_PS_UDP: "RDMA_PS_UDP", RDMA_PS_IB: "RDMA_PS_IB"}
UD_PORT_SPACES = (RDMA_PS_UDP, RDMA_PS_IPOIB)   # connect/accept are SIDR (cma_is_ud_ps)
RDMA_UDP_QKEY = 0x01234567
CMA_HDR = struct.Struct("!BBH16s16s")
CMA_VERSION = 0x00
REQ_PRIVATE_DATA = 92 - CMA_HDR.size        # what a consumer may put in a REQ: 56 bytes
SIDR_REQ_PRIVATE_DATA = 216 - CMA_HDR.size  # and in a SIDR_REQ: 180 bytes
RAI_PASSIVE = 1                             # rdma_addrinfo hint flag

# rdma_set_option (rdma_cma.h): levels and option names
RDMA_OPTION_ID = 0
RDMA_OPTION_IB = 1
RDMA_OPTION_ID_TOS = 0          # u8: the IP TOS / traffic class of the connection
RDMA_OPTION_ID_REUSEADDR = 1    # int
RDMA_OPTION_ID_AFONLY = 2       # int
RDMA_OPTION_ID_ACK_TIMEOUT = 3  # u8: the QP's local ACK timeout code (4.096 us * 2^n)
RDMA_OPTION_IB_PATH = 1         # struct ibv_path_data[]: IB SA paths, not on RoCE


class CMEventType(IntEnum):
    RDMA_CM_EVENT_ADDR_RESOLVED = 0
    RDMA_CM_EVENT_ADDR_ERROR = 1
    RDMA_CM_EVENT_ROUTE_RESOLVED = 2
    RDMA_CM_EVENT_ROUTE_ERROR = 3
    RDMA_CM_EVENT_CONNECT_REQUEST = 4
    RDMA_CM_EVENT_CONNECT_RESPONSE = 5
    RDMA_CM_EVENT_CONNECT_ERROR = 6
    RDMA_CM_EVENT_UNREACHABLE = 7
    RDMA_CM_EVENT_REJECTED = 8
    RDMA_CM_EVENT_ESTABLISHED = 9
    RDMA_CM_EVENT_DISCONNECTED = 10
    RDMA_CM_EVENT_DEVICE_REMOVAL = 11
    RDMA_CM_EVENT_MULTICAST_JOIN = 12
    RDMA_CM_EVENT_MULTICAST_ERROR = 13
    RDMA_CM_EVENT_ADDR_CHANGE = 14
    RDMA_CM_EVENT_TIMEWAIT_EXIT = 15
    # rnicd's own: connections a listener's daemon established on its behalf (offload),
    # delivered in bulk; not in librdmacm
    RNIC_CM_EVENT_OFFLOAD_ESTABLISHED = 64


def service_id(port: int, port_space: int = RDMA_PS_TCP) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    if port_space not in PORT_SPACES:
        raise ValueError(f"port space {port_space:#x} is not an rdma_cm port space")
    return (port_space << 16) | port


def split_service_id(sid: int) -> tuple[int, int] | None:
    """(port space, port) of an rdma_cm Service ID (untrusted), or None if it is not one."""
    ps = sid >> 16
    return (ps, sid & 0xFFFF) if ps in PORT_SPACES else None


def port_of(sid: int) -> int | None:
    """The rdma_cm port a Service ID names, or None if it is not in RDMA_PS_TCP."""
    split = split_service_id(sid)
    return split[1] if split is not None and split[0] == RDMA_PS_TCP else None


def _addr16(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    return bytes(12) + a.packed if a.version == 4 else a.packed


def req_private_data(src_ip: str, src_port: int, dst_ip: str, user: bytes,
                     room: int = REQ_PRIVATE_DATA) -> bytes:
    """The private data of a REQ (or SIDR_REQ: room=SIDR_REQ_PRIVATE_DATA): the CMA header,
    then the consumer's bytes (at most `room`)."""
    if len(user) > room:
        raise ValueError(f"REQ private data is {len(user)} bytes; at most "
                         f"{room} fit after the rdma_cm header")
    version = ipaddress.ip_address(src_ip).version
    return CMA_HDR.pack(CMA_VERSION, version << 4, src_port, _addr16(src_ip),
                        _addr16(dst_ip)) + bytes(user)


def parse_req_private_data(data: bytes):
    """-> (src_ip, src_port, dst_ip, consumer bytes), or None if there is no valid CMA
    header (untrusted input)."""
    if len(data) < CMA_HDR.size:
        return None
    version, ipver, sport, src, dst = CMA_HDR.unpack_from(data)
    if version != CMA_VERSION or ipver >> 4 not in (4, 6):
        return None

    def ip(b: bytes) -> str:
        return str(ipaddress.IPv4Address(b[12:]) if ipver >> 4 == 4 else
                   ipaddress.IPv6Address(b))
    return ip(src), sport, ip(dst), bytes(data[CMA_HDR.size:])

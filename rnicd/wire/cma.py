"""rdma_cm's conventions on top of IB CM (as librdmacm and the Linux rdma_cm module use them),
so that a connection looks on the wire like one made by a real RoCE NIC.

- Service ID: an rdma_cm port in port space PS (RDMA_PS_TCP = 0x0106) is the IB Service ID
  0x0000_0000_PPPP_pppp with PS in bits 16..31 and the port in bits 0..15.
- REQ private data starts with the 36-byte "CMA header": version 0, the IP version in the high
  nibble of byte 1, the source port, then the source and destination addresses in 16 bytes
  each (IPv4: 12 zero bytes, then the address). The consumer's private data follows, so a
  consumer gets 92 - 36 = 56 bytes in a REQ.
- rdma_cm event types (enum rdma_cm_event_type in librdmacm's rdma_cma.h).
"""
import ipaddress
import struct
from enum import IntEnum

RDMA_PS_TCP = 0x0106
CMA_HDR = struct.Struct("!BBH16s16s")
CMA_VERSION = 0x00
REQ_PRIVATE_DATA = 92 - CMA_HDR.size        # what a consumer may put in a REQ: 56 bytes
RAI_PASSIVE = 1                             # rdma_addrinfo hint flag


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
    return (port_space << 16) | port


def port_of(sid: int) -> int | None:
    """The rdma_cm port a Service ID names, or None if it is not in RDMA_PS_TCP."""
    return sid & 0xFFFF if sid >> 16 == RDMA_PS_TCP else None


def _addr16(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    return bytes(12) + a.packed if a.version == 4 else a.packed


def req_private_data(src_ip: str, src_port: int, dst_ip: str, user: bytes) -> bytes:
    """The private data of a REQ: the CMA header, then the consumer's bytes (at most 56)."""
    if len(user) > REQ_PRIVATE_DATA:
        raise ValueError(f"REQ private data is {len(user)} bytes; at most "
                         f"{REQ_PRIVATE_DATA} fit after the rdma_cm header")
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

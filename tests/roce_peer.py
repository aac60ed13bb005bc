"""A RoCEv2 test peer independent of rnicd's requester: requests are built by scapy (its
BTH computes the ICRC, IBTA Annex A17.3.3), responses are checked with a hand-written
ICRC over zlib (checked against scapy's in test_native's test_icrc_of_gso_segments).
The peer's socket receives with UDP GRO, so that a daemon's GSO run arrives as the one buffer
it was sent as: segment k of it went out with IPv4 Identification k, which its ICRC covers."""
from __future__ import annotations

import socket
import struct
import zlib

from scapy.contrib.roce import BTH
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

ROCE_PORT = 4791
# RC opcodes (IBTA 9.2 Table 38)
WRITE_FIRST, WRITE_MIDDLE, WRITE_LAST, WRITE_ONLY = 0x06, 0x07, 0x08, 0x0A
SEND_ONLY, READ_REQUEST, ACK = 0x04, 0x0C, 0x11
READ_FIRST, READ_MIDDLE, READ_LAST, READ_ONLY = 0x0D, 0x0E, 0x0F, 0x10
UDP_GRO = 104       # linux/udp.h: a receive reports its GRO segment size


def request(opcode: int, dqpn: int, psn: int, src: str, dst: str, sport: int,
            body: bytes = b"", ackreq: bool = True) -> bytes:
    """UDP payload of one request: BTH + body (extension headers, payload, pad) + ICRC."""
    pad = -len(body) % 4 if opcode not in (READ_REQUEST,) else 0
    p = (IP(src=src, dst=dst, flags="DF", id=0) / UDP(sport=sport, dport=ROCE_PORT)
         / BTH(opcode=opcode, dqpn=dqpn, psn=psn, ackreq=int(ackreq), padcount=pad)
         / Raw(body + bytes(pad)))
    return bytes(p)[28:]


def reth(va: int, rkey: int, length: int) -> bytes:
    return struct.pack("!QII", va, rkey, length)


def icrc(data: bytes, src: str, dst: str, sport: int, ip_id: int = 0) -> int:
    """ICRC of a UDP payload without its last 4 bytes, as sent in IPv4 ID ip_id, DF."""
    n = len(data) + 4
    pseudo = b"\xff" * 8 + struct.pack(
        "!BBHHHBBH4s4sHHHH", 0x45, 0xFF, 28 + n, ip_id, 0x4000, 0xFF, 17, 0xFFFF,
        socket.inet_aton(src), socket.inet_aton(dst), sport, ROCE_PORT, 8 + n, 0xFFFF)
    crc = zlib.crc32(pseudo)
    crc = zlib.crc32(data[:4], crc)
    crc = zlib.crc32(b"\xff", crc)              # FECN, BECN, Resv6 masked
    return zlib.crc32(memoryview(data)[5:], crc)


def datagrams(sock: socket.socket):
    """(datagram, IPv4 ID) from a socket with GRO on (enable_gro): a buffer of segments is
    split at its GRO size; the kernel gave segment k of a GSO send ID k."""
    while True:
        data, anc, _flags, _addr = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
        size = len(data) or 1
        for level, kind, value in anc:
            if level == socket.IPPROTO_UDP and kind == UDP_GRO:
                size = struct.unpack("=i", value[:4])[0]
        for k, off in enumerate(range(0, max(len(data), 1), size)):
            yield data[off:off + size], k


def responses(sock: socket.socket, src: str, dst: str):
    """parse_response of each datagram from src (datagrams)."""
    for pkt, ip_id in datagrams(sock):
        yield parse_response(pkt, src, dst, ip_id=ip_id)


def enable_gro(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)


def parse_response(pkt, src: str, dst: str, sport: int = ROCE_PORT, ip_id: int = 0) -> dict:
    """Opcode, PSN, AETH (if any) and payload of a response, ICRC checked."""
    pkt = bytes(pkt)
    assert struct.unpack("<I", pkt[-4:])[0] == icrc(pkt[:-4], src, dst, sport, ip_id), \
        "bad ICRC"
    op, flags, psn = pkt[0], pkt[1], int.from_bytes(pkt[9:12], "big")
    hdr = 12 if op == READ_MIDDLE else 16
    aeth = None if op == READ_MIDDLE else (pkt[12], int.from_bytes(pkt[13:16], "big"))
    pad = (flags >> 4) & 3
    return dict(op=op, psn=psn, dqpn=int.from_bytes(pkt[5:8], "big"), aeth=aeth,
                payload=pkt[hdr:len(pkt) - 4 - pad])

"""Kernel steering of RoCEv2 datagrams by destination QP (native/src/steer.c): sockets in one
SO_REUSEPORT group on one UDP port, the classic BPF program attached, and real datagrams
built by wire/roce.py — each must arrive at socket DestQP mod N, whoever sends it (the
kernel's own hash would spread one sender's datagrams by its address, not by QP)."""
import errno
import os
import select
import socket

import pytest

from rnicd import native
from rnicd.wire import opcodes as op
from rnicd.wire import roce

lib = native.lib


def group(n: int, ip: str = "127.0.0.1"):
    """n UDP sockets bound to one port with SO_REUSEPORT, in order (their group index)."""
    socks = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((ip, port))
        port = s.getsockname()[1]
        s.setblocking(False)
        socks.append(s)
    return socks, port


def bth_packet(qpn: int, port: int) -> bytes:
    pkt = roce.Packet(opcode=op.Opcode.RC_SEND_ONLY, dest_qp=qpn, psn=1)
    return roce.build(pkt, b"x" * 16, src_ip="127.0.0.1", dst_ip="127.0.0.1", sport=4791,
                      dport=port)


def received(socks) -> list[list[bytes]]:
    got = [[] for _ in socks]
    while select.select(socks, [], [], 0.2)[0]:
        for i, s in enumerate(socks):
            try:
                while True:
                    got[i].append(s.recv(2048))
            except BlockingIOError:
                pass
    return got


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_datagrams_reach_the_socket_of_their_qp(n):
    socks, port = group(n)
    try:
        assert lib.rnic_steer_by_qpn(socks[0].fileno(), n) == 0
        qpns = [17, 18, 19, 20, 21, 0xFFFFFF, 0x123456, 1 << 23, 5, 1000]
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for k, qpn in enumerate(qpns):
            senders[k % 3].sendto(bth_packet(qpn, port), ("127.0.0.1", port))
        got = received(socks)
        for i, datagrams in enumerate(got):
            seen = sorted(int.from_bytes(d[5:8], "big") for d in datagrams)
            assert seen == sorted(q for q in qpns if q % n == i), (i, seen)
    finally:
        for s in socks + senders:
            s.close()


def test_a_runt_datagram_goes_to_the_first_socket():
    socks, port = group(2)
    try:
        assert lib.rnic_steer_by_qpn(socks[1].fileno(), 2) == 0   # any member attaches it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"\x04\x00\x00", ("127.0.0.1", port))       # shorter than a BTH
        got = received(socks)
        assert [len(g) for g in got] == [1, 0]
    finally:
        for s in socks:
            s.close()


def test_bad_counts_and_sockets_are_refused():
    socks, _ = group(1)
    try:
        assert lib.rnic_steer_by_qpn(socks[0].fileno(), 0) == -errno.EINVAL
        assert lib.rnic_steer_by_qpn(socks[0].fileno(), lib.RNIC_STEER_MAX + 1) == -errno.EINVAL
    finally:
        socks[0].close()
    r, w = os.pipe()
    try:
        assert lib.rnic_steer_by_qpn(r, 2) == -errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)

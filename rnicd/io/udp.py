"""The RoCEv2 port: one UDP socket on (bind address, 4791), read in batches."""
from __future__ import annotations

import logging
import socket

log = logging.getLogger("rnicd.udp")

IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2      # linux/in.h
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33      # asm-generic/socket.h (root may exceed rmem_max)
SOCKET_BUFFER = 16 << 20
RECV_BATCH = 64


def open_roce_socket(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # DF set and IP ID 0 on an unconnected socket: the ICRC covers the IP ID (A17.3.3)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                             (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        sock.bind((ip, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class RocePort:
    def __init__(self, loop, sock: socket.socket, on_datagram, on_batch_end, counters):
        self.loop = loop
        self.sock = sock
        self.on_datagram = on_datagram
        self.on_batch_end = on_batch_end
        self.counters = counters
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self):
        recv = self.sock.recvfrom
        now = self.loop.time()
        for _ in range(RECV_BATCH):
            try:
                data, addr = recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:        # e.g. ICMP errors reported on the socket
                self.counters.inc("rx_socket_error")
                log.debug("recvfrom: %s", exc)
                break
            self.on_datagram(data, addr[0], addr[1], now)
        self.on_batch_end()

    def send(self, data: bytes, addr):
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.counters.inc("tx_dropped_busy")     # the retransmit timer recovers it
        except OSError as exc:
            self.counters.inc("tx_error")
            log.debug("sendto %s: %s", addr, exc)

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

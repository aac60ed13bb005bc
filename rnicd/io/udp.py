"""The RoCEv2 port: one UDP socket on (bind address, 4791), read in batches."""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import struct

from rnicd import native
from rnicd.wire.roce import ROCEV2_PORT

log = logging.getLogger("rnicd.udp")

IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2      # linux/in.h
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33      # asm-generic/socket.h (root may exceed rmem_max)
SOCKET_BUFFER = 16 << 20
RECV_BATCH = 64             # datagrams per recvmmsg
RECV_BUF = 9216             # bytes per datagram buffer: a 4096-MTU RoCE packet fits twice
BATCHES_PER_WAKEUP = 8      # then yield to the loop (doorbells, timers, control verbs)


def open_roce_socket(ip: str, port: int, reuseport: bool = False) -> socket.socket:
    """reuseport: one of the port's SO_REUSEPORT group (the engines', io/engines.py)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    """Receives in batches (recvmmsg); the data plane handles what it can of each batch, and
    only the rest — the slow-path events — reaches Python, one datagram at a time."""

    def __init__(self, loop, sock: socket.socket, device, on_batch_end,
                 guard=contextlib.nullcontext):
        self.loop = loop
        self.guard = guard          # held around every call into the device (the engines)
        self.sock = sock
        self.device = device
        self.on_batch_end = on_batch_end
        self.counters = device.counters
        ffi = native.ffi
        self._bufs = ffi.new("uint8_t[]", RECV_BATCH * RECV_BUF)
        self._lens = ffi.new("uint32_t[]", RECV_BATCH)
        self._addrs = ffi.new("uint32_t[]", RECV_BATCH)
        self._ports = ffi.new("uint16_t[]", RECV_BATCH)
        self._slow = ffi.new("uint32_t[]", RECV_BATCH)
        self._tx_ports = ffi.new("uint16_t[]", [ROCEV2_PORT] * native.lib.RNIC_MAX_BATCH)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self):
        with self.guard():
            self._read()

    def _read(self):
        lib, ffi, dev = native.lib, native.ffi, self.device
        bufs, lens, addrs, ports, slow = (self._bufs, self._lens, self._addrs, self._ports,
                                          self._slow)
        now = self.loop.time()
        for _ in range(BATCHES_PER_WAKEUP):
            n = lib.rnic_recv_batch(self.sock.fileno(), bufs, RECV_BUF, RECV_BATCH, lens,
                                    addrs, ports)
            if n <= 0:
                if n < 0:
                    self.counters.inc("rx_socket_error")
                break
            dev.dp.now = now
            for k in range(lib.rnic_dp_rx_batch(dev.dp, bufs, RECV_BUF, lens, addrs, ports,
                                                n, slow)):
                i = slow[k]
                if lens[i] > RECV_BUF:
                    self.counters.inc("rx_drop_oversize")
                    continue
                data = ffi.buffer(bufs + i * RECV_BUF, lens[i])[:]
                dev.receive_slow(data, _ip_str(addrs[i]), ports[i], now)
            if n < RECV_BATCH:
                break
        self.on_batch_end()

    def send_queued(self, dp):
        """Send the data plane's transmit buffer with sendmmsg, in order, and empty it."""
        lib, fd, sent = native.lib, self.sock.fileno(), 0
        while sent < dp.ntx:
            n = min(dp.ntx - sent, lib.RNIC_MAX_BATCH)
            rc = lib.rnic_send_batch(fd, dp.tx_bufs + sent * dp.tx_buf_size, dp.tx_buf_size,
                                     dp.tx_lens + sent, n, dp.tx_addrs_be + sent,
                                     self._tx_ports)
            if rc <= 0:            # the rest is lost; the retransmit timers recover it
                lost = dp.ntx - sent
                if rc == 0:
                    self.counters.inc("tx_dropped_busy", lost)       # socket buffer full
                else:
                    name = errno.errorcode.get(-rc, str(-rc))
                    self.counters.inc(f"tx_err_{name}", lost)        # EMSGSIZE: path MTU
                    log.warning("sendmmsg: %s (%d datagrams lost)", os.strerror(-rc), lost)
                break
            sent += rc
        dp.ntx = 0

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


@functools.lru_cache(maxsize=1024)
def _ip_str(addr_be: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", addr_be))

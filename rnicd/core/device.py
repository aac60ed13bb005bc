"""One emulated RNIC: key and QP tables, packet dispatch, completions, timers (sans-I/O).

The io layer feeds it datagrams (`receive`), doorbells (`doorbell`) and clock ticks
(`on_timer`), and after each call drains `tx` (datagrams to send), `notify` (completion
channels to signal) and `events` (asynchronous events for clients), like aioquic's
datagrams_to_send(). Time is always passed in as `now`.
"""
from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass

from rnicd import native
from rnicd.core.counters import Counters
from rnicd.core.fault import FaultInjector, FaultSpec
from rnicd.core.qp_state import QPLimits
from rnicd.core.resources import CQ, CQEntry, KeyTable
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import EventType

log = logging.getLogger("rnicd.device")

ROCE_PORT = 4791


@dataclass
class DeviceLimits:
    """What query_device reports and create_* enforce."""
    max_qp: int = 16384
    max_qp_wr: int = 16384
    max_sge: int = 32
    max_cq: int = 16384
    max_cqe: int = 1 << 20
    max_mr: int = 1 << 16
    max_mr_size: int = 1 << 40
    max_pd: int = 1 << 16
    max_qp_rd_atom: int = 16
    max_qp_init_rd_atom: int = 16
    max_srq: int = 8192
    max_srq_wr: int = 16384
    max_srq_sge: int = 32
    max_inline_data: int = 512
    max_msg_sz: int = 1 << 31


class Device:
    def __init__(self, name: str, ip: str, port: int = ROCE_PORT, fault: FaultSpec | None = None,
                 seed: int | None = None):
        self.name = name
        self.ip = ip
        self.port = port
        self.native = native
        self.limits = DeviceLimits()
        self.qp_limits = QPLimits(max_qp_rd_atom=self.limits.max_qp_rd_atom,
                                  max_qp_init_rd_atom=self.limits.max_qp_init_rd_atom)
        self.rng = random.Random(seed)
        self.keys = KeyTable(self.rng)
        self.qps: dict[int, object] = {}
        self._next_qpn = 0x11            # QPN 0 and 1 are reserved (SMI/GSI), as in IBTA
        self.counters = Counters()
        self.fault = FaultInjector(fault or FaultSpec(), self.counters)
        # outputs, drained by the io layer
        self.tx: list[tuple[bytes, tuple[str, int]]] = []
        self.notify: set = set()
        self.events: list[tuple[object, dict]] = []
        self._acks: set = set()

    # ---- identity ------------------------------------------------------------------------
    @property
    def gid(self) -> bytes:
        """GID 0: the IPv4-mapped bind address (RoCE v2, IBTA A17.4.5.1)."""
        return ipaddress.IPv6Address(f"::ffff:{self.ip}").packed

    @property
    def node_guid(self) -> int:
        """EUI-64 style GUID derived from the address, stable across restarts."""
        a = ipaddress.IPv4Address(self.ip).packed
        return int.from_bytes(b"\x02\x00\x5e\xff\xfe" + a[1:], "big")

    # ---- QP table ------------------------------------------------------------------------
    def allocate_qpn(self) -> int:
        for _ in range(1 << 24):
            qpn = self._next_qpn
            self._next_qpn = 0x11 if self._next_qpn >= 0xFFFFFF else self._next_qpn + 1
            if qpn not in self.qps:
                return qpn
        raise OverflowError("no free QP number")

    def add_qp(self, qp):
        self.qps[qp.qp_num] = qp

    def remove_qp(self, qp):
        self.qps.pop(qp.qp_num, None)
        self._acks.discard(qp)

    # ---- inputs --------------------------------------------------------------------------
    def receive(self, data, src_ip: str, src_port: int, now: float):
        """One datagram from UDP 4791. Bad input is counted and dropped, never raised."""
        c = self.counters
        c.inc("rcvd_pkts")
        try:
            pkt = roce.parse(data, src_ip=src_ip, dst_ip=self.ip, sport=src_port,
                             dport=self.port)
        except roce.MalformedPacket as exc:
            c.inc(f"rx_drop_{exc.reason}")
            if exc.reason == "bad_icrc":
                c.inc("icrc_err")
            return
        info = op.OPCODES.get(pkt.opcode)
        qp = self.qps.get(pkt.dest_qp)
        if info is None or info.transport != op.Transport.RC:
            c.inc("rx_drop_unsupported_opcode")
            return
        if qp is None:
            c.inc("rx_drop_unknown_qp")
            return
        if qp.peer_ip != src_ip:
            c.inc("rx_drop_wrong_source")
            return
        qp.counters.inc("rcvd_qp_pkts")
        if info.is_request:
            qp.responder.on_request(pkt, info, now)
            if qp.responder.ack_pending:
                self._acks.add(qp)
        else:
            qp.completer.on_response(pkt, info, now)

    def end_batch(self):
        """After a batch of received datagrams: one coalesced ACK per QP."""
        for qp in self._acks:
            qp.responder.flush_ack()
        self._acks.clear()

    def doorbell(self, owner, now: float):
        for qp in list(owner.qps.values()):
            qp.requester.pump(now)

    def next_deadline(self) -> float | None:
        ds = [d for qp in self.qps.values() if (d := qp.deadline()) is not None]
        return min(ds) if ds else None

    def on_timer(self, now: float):
        for qp in list(self.qps.values()):
            d = qp.deadline()
            if d is not None and d <= now:
                qp.on_timer(now)

    # ---- outputs -------------------------------------------------------------------------
    def emit(self, qp, pkt: roce.Packet, payload=b""):
        data = roce.build(pkt, payload, src_ip=self.ip, dst_ip=qp.peer_ip, sport=self.port,
                          dport=ROCE_PORT)
        self.counters.inc("sent_pkts")
        self.tx.append((data, (qp.peer_ip, ROCE_PORT)))

    def complete(self, cq: CQ, e: CQEntry):
        if not cq.push(e):
            self.counters.inc("cq_overflow")
            log.warning("CQ %d overrun: completion for wr_id %d lost", cq.handle, e.wr_id)
            self.post_event(cq.owner, {"type": int(EventType.IBV_EVENT_CQ_ERR), "cq": cq.handle})
            return
        if cq.should_notify(e):
            self.notify.add(cq.channel)

    def post_event(self, owner, ev: dict):
        self.events.append((owner, ev))

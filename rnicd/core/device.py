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


QP_TABLE = 1 << 15          # QPNs are indices into the data plane's QP table
MR_TABLE = 1 << 16          # key indices are indices into its MR table
ACKS_PER_BATCH = 256        # QPs that may come to owe an ACK in one received batch


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
        self.keys = KeyTable(self.rng, MR_TABLE)
        self.qps: dict[int, object] = {}
        self._next_qpn = 0x11            # QPN 0 and 1 are reserved (SMI/GSI), as in IBTA
        self.counters = Counters()
        # the data plane's view of this device: our address, QP and MR tables, ACKs owed
        ffi = native.ffi
        self._dp_qps = ffi.new("struct rnic_dp_qp *[]", QP_TABLE)
        self._dp_acks = ffi.new("uint32_t[]", ACKS_PER_BATCH)
        self.dp = ffi.new("struct rnic_dp_dev *", {
            "ip_be": native.ipv4_be(ip), "port": port, "qps": self._dp_qps,
            "qps_len": QP_TABLE, "mrs": self.keys.dp, "mrs_len": MR_TABLE,
            "acks": self._dp_acks, "acks_len": ACKS_PER_BATCH})
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
        for _ in range(QP_TABLE):
            qpn = self._next_qpn
            self._next_qpn = 0x11 if self._next_qpn >= QP_TABLE - 1 else self._next_qpn + 1
            if qpn not in self.qps:
                return qpn
        raise OverflowError("no free QP number")

    def add_qp(self, qp):
        self.qps[qp.qp_num] = qp
        self._dp_qps[qp.qp_num] = qp.dp

    def remove_qp(self, qp):
        self.qps.pop(qp.qp_num, None)
        self._dp_qps[qp.qp_num] = native.ffi.NULL
        self._acks.discard(qp)

    def forget_region(self, mr):
        """An MR goes away: no key reaches it any more, and a WRITE being placed into it is
        abandoned (its next packet meets the responder's checks and is NAKed)."""
        self.keys.remove(mr)
        lo, hi = mr.pointer(mr.iova), mr.pointer(mr.iova + mr.length)
        for qp in self.qps.values():
            if qp.dp.msg == native.lib.RNIC_DP_MSG_WRITE and lo <= qp.dp.write_ptr <= hi:
                qp.responder.abandon_write()

    # ---- inputs --------------------------------------------------------------------------
    def receive(self, data, src_ip: str, src_port: int, now: float):
        """One datagram from UDP 4791: the data plane's fast path first, else the slow path."""
        dp = self.dp
        if native.lib.rnic_dp_rx_one(dp, data, len(data), native.ipv4_be(src_ip), src_port):
            dp.fast_pkts += 1
            return
        dp.slow_pkts += 1
        self.receive_slow(data, src_ip, src_port, now)

    def receive_slow(self, data, src_ip: str, src_port: int, now: float):
        """A datagram the data plane handed over. Bad input is counted and dropped, never
        raised."""
        c = self.counters
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
        """After a batch of received datagrams: one coalesced ACK per QP that owes one, found
        by the slow path (_acks) or listed by the data plane (dp.acks)."""
        dp = self.dp
        for i in range(dp.nacks):
            qp = self.qps.get(self._dp_acks[i])
            if qp is not None:
                self._acks.add(qp)
        if dp.nacks == dp.acks_len:        # the list overflowed: look at every QP
            self._acks.update(q for q in self.qps.values() if q.dp.ack_pending)
        dp.nacks = 0
        for qp in self._acks:
            qp.responder.flush_ack()
        self._acks.clear()

    def counter_snapshot(self) -> dict[str, int]:
        """The named counters plus the data plane's: every datagram received is either
        handled by the fast path or a slow-path event."""
        snap = self.counters.snapshot()
        snap["rcvd_pkts"] = self.dp.fast_pkts + self.dp.slow_pkts
        snap["dp_fast_pkts"] = self.dp.fast_pkts
        snap["slow_path_events"] = self.dp.slow_pkts
        return dict(sorted(snap.items()))

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

"""One emulated RNIC: key and QP tables, packet dispatch, completions, timers (sans-I/O).

The io layer feeds it datagrams (`receive`), doorbells (`doorbell`) and clock ticks
(`on_timer`), and after each call drains `tx` (datagrams to send), `notify` (completion
channels to signal) and `events` (asynchronous events for clients), like aioquic's
datagrams_to_send(). Time is always passed in as `now`.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import random
import struct
from dataclasses import dataclass

from rnicd import native
from rnicd.core import mw
from rnicd.core.cm.agent import CMAgent
from rnicd.core.counters import Counters
from rnicd.core.fault import FaultInjector, FaultSpec
from rnicd.core.qp_state import QPLimits
from rnicd.core.resources import CQ, SRQ, CQEntry, KeyTable, XRCDomain
from rnicd.core.roce.dpstate import DP_COUNTERS
from rnicd.errors import VerbsError
from rnicd.wire import mad, roce
from rnicd.wire import opcodes as op
from rnicd.wire.abi import MTU, EventType, QPState, QPType, WCStatus, mtu_bytes
from rnicd.wire.roce import ROCEV2_PORT

log = logging.getLogger("rnicd.device")

GID_TABLE = 16
ROCE_OVERHEAD = 20 + 8 + 12 + 28 + 4 + 4    # IPv4, UDP, BTH, AtomicETH/RETH+ImmDt, ICRC, pad


XRC_TYPES = (QPType.IBV_QPT_XRC_SEND, QPType.IBV_QPT_XRC_RECV)
# QPs with the RC engines (core/roce): RC, UC (unreliable) and XRC
RC_LIKE = (QPType.IBV_QPT_RC, QPType.IBV_QPT_UC) + XRC_TYPES

QP_TABLE = 1 << 15          # QPNs are indices into the data plane's QP table
AH_TABLE = (1 << 16) + 1    # AH handles are indices into its AH table (max_ah; 0 is none)
MR_TABLE = 1 << 17          # key indices are indices into its key table (MRs and MWs)
ACKS_PER_BATCH = 256        # QPs that may come to owe an ACK in one received batch
TX_CAP = 1024               # datagrams queued before they must be sent (or spilled)
TX_BUF = 4608               # bytes per queued datagram: a 4096-byte payload and headers
NOTIFY_CAP = 1 << 14        # CQ notifications between two drains (at most one per CQ)
# transports of QPs with one peer (RCQP)
CONNECTED = (op.Transport.RC, op.Transport.UC, op.Transport.XRC)


@dataclass
class DeviceLimits:
    """What query_device reports and create_* enforce."""
    max_qp: int = 16384
    max_qp_wr: int = 16384
    max_sge: int = 32
    max_cq: int = 16384
    max_cqe: int = 1 << 20
    max_mr: int = 1 << 16
    max_mw: int = 1 << 16
    max_ah: int = 1 << 16
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
    def __init__(self, name: str, ip: str, port: int = ROCEV2_PORT, fault: FaultSpec | None = None,
                 seed: int | None = None):
        self.name = name
        self.ip = ip
        self.port = port
        self.native = native
        self.limits = DeviceLimits()
        self._free_ahs = list(range(AH_TABLE - 1, 0, -1))     # AH handles, lowest last
        self.qps: dict[int, object] = {}
        self.set_netdev_mtu(None)
        self.port_active = True
        self.netdev_ifindex: int | None = None     # the bound netdev, when one holds our IP
        self.gid_table = [self.gid] + [bytes(16)] * (GID_TABLE - 1)
        self.rng = random.Random(seed)
        self.keys = KeyTable(self.rng, MR_TABLE)
        self.windows: set = set()          # memory windows (core/mw.py), also in keys
        self._next_qpn = 0x11            # QPN 0 and 1 are reserved (SMI/GSI), as in IBTA
        # XRC (Annex A14): domains shared by file (inode), XRC SRQs by their number
        self.xrc_domains: dict[object, XRCDomain] = {}
        self.xrc_srqs: dict[int, SRQ] = {}
        self._next_srqn = 1
        self.counters = Counters()
        # the data plane's view of this device: our address, QP and MR tables, ACKs owed
        ffi = native.ffi
        self._dp_arrays = dict(
            qps=native.shared_new("struct rnic_dp_qp *[]", QP_TABLE),
            ahs=native.shared_new("struct rnic_dp_ah *[]", AH_TABLE),
            acks=ffi.new("uint32_t[]", ACKS_PER_BATCH),
            pumps=ffi.new("uint32_t[]", ACKS_PER_BATCH),
            notify=ffi.new("uint32_t[]", NOTIFY_CAP),
            tx_bufs=ffi.new("uint8_t[]", TX_CAP * TX_BUF),
            tx_lens=ffi.new("uint32_t[]", TX_CAP),
            tx_addrs_be=ffi.new("uint32_t[]", TX_CAP))
        # the one lock of RDMA atomics, shared with the engines (IBV_ATOMIC_HCA)
        self._dp_arrays["atomic_lock"] = native.shared_new("uint32_t[]", 1)
        self.dp = native.shared_new("struct rnic_dp_dev *", dict(
            self._dp_arrays, ip_be=native.ipv4_be(ip), port=port, qps_len=QP_TABLE,
            ahs_len=AH_TABLE,
            mrs=self.keys.dp, mrs_len=MR_TABLE, acks_len=ACKS_PER_BATCH,
            pumps_cap=ACKS_PER_BATCH, notify_cap=NOTIFY_CAP, tx_buf_size=TX_BUF,
            tx_cap=TX_CAP))
        self.cqs: dict[int, CQ] = {}        # by uid, to resolve the data plane's reports
        # engines (io/engines.py, docs/engines.md): comp vector k is engine k's; a QP is
        # served by its send CQ's engine, and its number is that engine's modulo the count
        # (the kernel steers its datagrams by it). None: no engines, the io layer calls us.
        self.comp_vectors = 1
        self.engines = None
        self._gone = Counters()             # data-plane counts of destroyed QPs
        self.fault = FaultInjector(fault or FaultSpec(), self.counters)
        # outputs, drained by the io layer (datagrams: see take_tx)
        self.tx: list[tuple[bytes, tuple[str, int]]] = []     # spilled from dp's tx buffer
        self.tx_later: list[tuple[float, bytes, tuple[str, int]]] = []  # held by faults
        self.notify: set = set()
        self.events: list[tuple[object, dict]] = []
        self._acks: set = set()
        self.reading: set = set()           # QPs with READ responses still to produce
        self.cm = CMAgent(self)             # QP1: connection management

    def apply_link(self, ifname: str, mtu: int, up: bool, addrs) -> None:
        """The bound interface changed (netlink): rebuild the GID table (IBTA A17.4.5:
        RoCEv2 GIDs are the interface's IPv4-mapped and IPv6 addresses; GID 0 stays the bound
        address while it exists), the port state and the active MTU, and tell every client."""
        gids = [roce.ipv4_mapped_gid(a) if ":" not in a else ipaddress.IPv6Address(a).packed
                for a in addrs]
        if self.gid in gids:
            gids.remove(self.gid)
            gids.insert(0, self.gid)
        table = (gids + [bytes(16)] * GID_TABLE)[:GID_TABLE]
        if table != self.gid_table:
            self.gid_table = table
            self.post_event(None, {"type": int(EventType.IBV_EVENT_GID_CHANGE), "port_num": 1})
        if up != self.port_active:
            self.port_active = up
            ev = EventType.IBV_EVENT_PORT_ACTIVE if up else EventType.IBV_EVENT_PORT_ERR
            log.info("port 1 of %s (%s): %s", self.name, ifname, "ACTIVE" if up else "DOWN")
            self.post_event(None, {"type": int(ev), "port_num": 1})
        if mtu != self.netdev_mtu:
            self.set_netdev_mtu(mtu)

    def set_netdev_mtu(self, netdev_mtu: int | None):
        """The port's active MTU: the largest IBTA MTU whose packets, with every RoCEv2
        header (IPv4, UDP, BTH, the largest extension headers, ICRC), fit the netdev's MTU,
        as rxe derives it. No netdev known: 4096. path_mtu may not exceed it (IBTA 11.2.4)."""
        self.netdev_mtu = netdev_mtu
        room = (netdev_mtu or 65536) - ROCE_OVERHEAD
        self.active_mtu = max((m for m in MTU if mtu_bytes(m) <= room), default=MTU.IBV_MTU_256)
        self.qp_limits = QPLimits(max_qp_rd_atom=self.limits.max_qp_rd_atom,
                                  max_qp_init_rd_atom=self.limits.max_qp_init_rd_atom,
                                  max_mtu=self.active_mtu)
        for qp in self.qps.values():            # a UD message fits the port's active MTU
            if qp.dp.ud:
                qp.dp.mtu = mtu_bytes(self.active_mtu)

    # ---- identity ------------------------------------------------------------------------
    @property
    def gid(self) -> bytes:
        """GID 0: the IPv4-mapped bind address (RoCE v2, IBTA A17.4.5.1)."""
        return roce.ipv4_mapped_gid(self.ip)

    @property
    def node_guid(self) -> int:
        """EUI-64 style GUID derived from the address, stable across restarts."""
        a = ipaddress.IPv4Address(self.ip).packed
        return int.from_bytes(b"\x02\x00\x5e\xff\xfe" + a[1:], "big")

    # ---- QP table ------------------------------------------------------------------------
    def engine_of(self, send_cq) -> int:
        """The engine that serves a QP: its send CQ's (XRC TGT QPs have none: engine 0)."""
        return send_cq.comp_vector % self.comp_vectors if send_cq is not None else 0

    def allocate_qpn(self, send_cq=None) -> int:
        """A free QPN that is the QP's engine modulo the engine count (the steering rule)."""
        n, want = self.comp_vectors, self.engine_of(send_cq)
        for _ in range(QP_TABLE):
            qpn = self._next_qpn
            self._next_qpn = 0x11 if self._next_qpn >= QP_TABLE - 1 else self._next_qpn + 1
            if qpn % n == want and qpn not in self.qps:
                return qpn
        raise OverflowError("no free QP number")

    def add_qp(self, qp):
        self.qps[qp.qp_num] = qp
        qp.dp.engine = self.engine_of(qp.send_cq)
        for ring in (qp.dp.sq, qp.dp.rq):    # clients ring that engine's doorbell only
            if ring != native.ffi.NULL:
                ring.doorbell = qp.dp.engine + 1
        self._dp_arrays["qps"][qp.qp_num] = qp.dp
        if self.engines is not None:
            self.engines.add_qp(qp)

    # ---- address handles (UD): the data plane finds a WQE's by its handle ---------------
    def add_ah(self, pd, peer_ip: str):
        """A new AH of pd towards peer_ip, with a device-wide handle (an index of the data
        plane's AH table). -> (handle, its struct rnic_dp_ah)."""
        if not self._free_ahs or AH_TABLE - 1 - len(self._free_ahs) >= self.limits.max_ah:
            raise VerbsError(errno.ENOMEM, f"create_ah: device limit of "
                             f"{self.limits.max_ah} address handles reached")
        handle = self._free_ahs.pop()
        rec = native.shared_new("struct rnic_dp_ah *", {"pd": pd.uid,
                                                        "ip_be": native.ipv4_be(peer_ip)})
        self._dp_arrays["ahs"][handle] = rec
        return handle, rec

    def remove_ah(self, handle: int):
        self._dp_arrays["ahs"][handle] = native.ffi.NULL
        self._free_ahs.append(handle)

    def remove_qp(self, qp):
        if self.engines is not None:
            self.engines.remove_qp(qp)
        mw.forget_qp(self, qp)
        self.qps.pop(qp.qp_num, None)
        self._dp_arrays["qps"][qp.qp_num] = native.ffi.NULL
        self._acks.discard(qp)
        self.reading.discard(qp)
        for name in DP_COUNTERS:
            self._gone.inc(name, getattr(qp.dp, name))

    # ---- XRC domains and SRQs (Annex A14.2) ----------------------------------------------
    def open_xrc_domain(self, key, create: bool, exclusive: bool) -> XRCDomain:
        """The domain of file `key` (None: a new private one), as ibv_open_xrcd: without
        O_CREAT a file with no domain yet is EAGAIN, with O_EXCL one that has one EINVAL."""
        dom = self.xrc_domains.get(key) if key is not None else None
        if dom is None:
            if key is not None and not create:
                raise VerbsError(errno.EAGAIN, "open_xrcd: no XRC domain is open for that "
                                 "file yet; pass O_CREAT in oflags to create it")
            dom = XRCDomain(key)
            if key is not None:
                self.xrc_domains[key] = dom
        elif exclusive:
            raise VerbsError(errno.EINVAL, "open_xrcd: that file already has an XRC domain "
                             "and oflags has O_EXCL")
        dom.opens += 1
        return dom

    def close_xrc_domain(self, dom: XRCDomain):
        dom.opens -= 1
        if dom.opens <= 0 and dom.key is not None:
            self.xrc_domains.pop(dom.key, None)

    def add_xrc_srq(self, srq: SRQ) -> int:
        """Give an XRC SRQ its device-wide number (what an XRCETH names, 24 bits)."""
        for _ in range(1 << 24):
            n = self._next_srqn
            self._next_srqn = n % ((1 << 24) - 1) + 1
            if n not in self.xrc_srqs:
                self.xrc_srqs[n] = srq
                srq.srq_num = n
                return n
        raise OverflowError("no free SRQ number")

    def remove_xrc_srq(self, srq: SRQ, now: float = 0.0):
        self.xrc_srqs.pop(srq.srq_num, None)
        for qp in self.qps.values():
            if getattr(qp, "srq", None) is srq and hasattr(qp, "unbind"):
                qp.unbind(srq, now)

    def xrc_srq(self, srqn, domain: XRCDomain) -> SRQ | None:
        """The XRC SRQ an XRCETH names, if it belongs to this domain (A14.2.2)."""
        srq = self.xrc_srqs.get(srqn)
        return srq if srq is not None and srq.xrcd.domain is domain else None

    def add_cq(self, cq: CQ):
        self.cqs[cq.uid] = cq

    def remove_cq(self, cq: CQ):
        self.cqs.pop(cq.uid, None)

    def forget_region(self, mr, now: float = 0.0):
        """An MR goes away: no key reaches it any more; a WRITE being placed into it is
        abandoned (its next packet meets the responder's checks and is NAKed); a QP with a
        send WR still using it fails (IBTA 10.6.1: deregistering memory in use is the
        consumer's error; here it must not leave the data plane a dangling pointer)."""
        self.keys.remove(mr)
        lo, hi = mr.pointer(mr.iova), mr.pointer(mr.iova + mr.length)
        for qp in list(self.qps.values()):
            if qp.qp_type not in RC_LIKE:
                continue                            # UD keeps no pointers between packets
            dp = qp.dp
            if dp.msg == native.lib.RNIC_DP_MSG_WRITE and lo <= dp.write_ptr <= hi:
                qp.responder.abandon_write()
            if dp.rd_npkts and lo <= dp.rd_src < hi:
                qp.responder.stop_reads()   # the requester's timer asks again: NAKed then
            if (dp.msg == native.lib.RNIC_DP_MSG_SEND or dp.recv_held) and any(
                    lo <= dp.recv_pieces[i].ptr < hi for i in range(dp.recv_npieces)):
                # the receive WQE being filled points into it: it completes in error
                self.counters.inc("mr_deregistered_in_use")
                qp.responder.abandon_send(WCStatus.IBV_WC_LOC_PROT_ERR)
                qp.fatal("a SEND was being received into a deregistered MR", now)
            if qp.requester.uses_region(mr):
                self.counters.inc("mr_deregistered_in_use")
                qp.fatal("a send WR still uses a deregistered MR", now)

    # ---- inputs --------------------------------------------------------------------------
    def receive(self, data, src_ip: str, src_port: int, now: float):
        """One datagram from UDP 4791: the data plane's fast path first, else the slow path."""
        dp = self.dp
        dp.now = now
        if native.lib.rnic_dp_rx_one(dp, data, len(data), native.ipv4_be(src_ip), src_port):
            dp.fast_pkts += 1
            return
        dp.slow_pkts += 1
        self.receive_slow(data, src_ip, src_port, now)

    def receive_slow(self, data, src_ip: str, src_port: int, now: float, ip_id: int = 0):
        """A datagram the data plane handed over (ip_id: its index in a GRO batch). Bad input
        is counted and dropped, never raised."""
        c = self.counters
        try:
            # the data plane's ICRC rule (IDs of GSO segments included), then the rest
            if len(data) >= roce.BTH_LEN + roce.ICRC_LEN and not native.roce_icrc_ok(
                    data, src_ip, self.ip, src_port, self.port, ip_id):
                raise roce.MalformedPacket("bad_icrc")
            pkt = roce.parse(data, src_ip=src_ip, dst_ip=self.ip, sport=src_port,
                             dport=self.port, check_icrc=False, lenient=True)
        except roce.MalformedPacket as exc:
            c.inc(f"rx_drop_{exc.reason}")
            if exc.reason == "bad_icrc":
                c.inc("icrc_err")
            return
        info = op.OPCODES.get(pkt.opcode)
        qp = self.qps.get(pkt.dest_qp)
        if info is None or info.transport not in CONNECTED + (op.Transport.UD,):
            c.inc("rx_drop_unsupported_opcode")
            return
        if pkt.bad_len is not None and not (
                info.is_request and qp is not None and qp.qp_type != QPType.IBV_QPT_UD
                and info.transport in CONNECTED and qp.peer_ip == src_ip):
            c.inc(f"rx_drop_{pkt.bad_len}")   # a connected responder checks length in turn
            return
        if qp is None:
            if pkt.dest_qp == mad.GSI_QPN and info.transport == op.Transport.UD:
                self.cm.receive(pkt, src_ip, now)
                return
            c.inc("rx_drop_unknown_qp")
            return
        transport = op.QPTYPE_TRANSPORT[qp.qp_type]
        # A14.2.3: an XRC INI QP takes responses, a TGT QP requests
        if qp.qp_type in XRC_TYPES and info.is_request != (qp.qp_type == QPType.IBV_QPT_XRC_RECV):
            transport = None
        if info.transport != transport:
            c.inc("rx_drop_wrong_transport")
            return
        qp.counters.inc("rcvd_qp_pkts")
        if transport == op.Transport.UD:
            qp.receive(pkt, info, src_ip, self.ip, now)
            return
        if qp.peer_ip != src_ip:
            c.inc("rx_drop_wrong_source")
            return
        if info.is_request:
            qp.responder.on_request(pkt, info, now)
            if qp.responder.ack_pending:
                self._acks.add(qp)
        else:
            qp.completer.on_response(pkt, info, now)

    def end_batch(self, now: float):
        """After a batch of received datagrams: one coalesced ACK per QP that owes one (found
        by the slow path, or listed by the data plane), and core/'s part of the requesters
        the data plane could not finish (it needs WQEs fetched, a READ sent, ...)."""
        dp, arrays = self.dp, self._dp_arrays
        if dp.nacks >= dp.acks_len:        # the list overflowed: look at every QP
            self._acks.update(q for q in self.qps.values() if q.dp.ack_pending)
            dp.nacks = 0
        if dp.ntx + dp.nacks > dp.tx_cap:
            self.spill_tx()
        native.lib.rnic_dp_flush_acks(dp)
        for qp in self._acks:
            qp.responder.flush_ack()
        self._acks.clear()
        pumps = self._listed(arrays["pumps"], dp.npumps, dp.pumps_cap,
                             lambda q: q.state == QPState.IBV_QPS_RTS or q.dp.rd_npkts)
        dp.npumps = 0
        for qp in pumps:
            if qp.dp.rd_npkts:
                self.reading.add(qp)
            qp.requester.pump(now)

    def produce(self, now: float) -> bool:
        """The transmit buffer drained: queue more of the READ responses in progress (IBTA
        9.7.4.1.5; paced by the transmit side, as hardware is). True while some remain."""
        self.dp.now = now
        for qp in list(self.reading):
            if self.dp.ntx >= self.dp.tx_cap:
                break
            if not qp.responder.produce():
                self.reading.discard(qp)
        return bool(self.reading)

    def _listed(self, array, n: int, cap: int, scan) -> set:
        """The QPs whose numbers the data plane listed; all that `scan` picks on overflow."""
        if n >= cap:
            return {q for q in self.qps.values() if scan(q)}
        return {qp for i in range(n) if (qp := self.qps.get(array[i])) is not None}

    def counter_snapshot(self) -> dict[str, int]:
        """The named counters plus the data plane's: every datagram received is either
        handled by the fast path or a slow-path event."""
        snap = self.counters.snapshot()
        for name in DP_COUNTERS:
            if n := self._gone[name] + sum(getattr(qp.dp, name) for qp in self.qps.values()):
                snap[name] = snap.get(name, 0) + n
            elif name in ("sent_pkts", "retransmitted_pkts"):
                snap.setdefault(name, 0)
        dps = [self.dp] + (self.engines.dps if self.engines is not None else [])
        fast, slow = sum(d.fast_pkts for d in dps), sum(d.slow_pkts for d in dps)
        snap["rcvd_pkts"] = fast + slow
        snap["dp_fast_pkts"] = fast
        snap["slow_path_events"] = slow
        if self.engines is not None:
            for name, value in self.engines.counters().items():
                snap[name] = snap.get(name, 0) + value
        return dict(sorted(snap.items()))

    def doorbell(self, owner, now: float):
        for qp in list(owner.qps.values()):
            qp.pump(now)

    def next_deadline(self) -> float | None:
        ds = [d for qp in self.qps.values() if (d := qp.deadline()) is not None]
        if (d := self.cm.deadline()) is not None:
            ds.append(d)
        return min(ds) if ds else None

    def on_timer(self, now: float):
        for qp in list(self.qps.values()):
            d = qp.deadline()
            if d is not None and d <= now:
                qp.on_timer(now)
        self.cm.on_timer(now)

    # ---- outputs -------------------------------------------------------------------------
    def emit(self, qp, pkt: roce.Packet, payload=b""):
        """Queue a packet core/ built for qp's peer."""
        self.emit_to(qp.peer_ip, qp.dp.peer_ip_be, pkt, payload)

    def emit_to(self, ip: str, ip_be: int, pkt: roce.Packet, payload=b""):
        """Queue a packet core/ built, behind the data plane's, so that order is kept."""
        data = roce.build(pkt, payload, src_ip=self.ip, dst_ip=ip, sport=self.port,
                          dport=ROCEV2_PORT)
        self.counters.inc("sent_pkts")
        lib = native.lib
        if lib.rnic_dp_tx_push(self.dp, data, len(data), ip_be) == -errno.ENOSPC:
            self.spill_tx()
            lib.rnic_dp_tx_push(self.dp, data, len(data), ip_be)

    def spill_tx(self):
        """The transmit buffer is full in the middle of a call: move it to `tx` (through
        fault injection first, like every datagram)."""
        self.inject_faults()
        self.tx.extend(self._tx_buffered())
        self.dp.ntx = 0

    def inject_faults(self):
        """Fault injection on the transmit buffer in place (native/src/fault.c): what is
        left goes out with it; the delayed and reordered datagrams wait in `tx_later`."""
        if self.dp.ntx and self.fault.spec.active():
            self.tx_later += self.fault.apply_buffer(self.dp,
                                                     lambda be: (_ip_str(be), ROCEV2_PORT))

    def take_later(self) -> list[tuple[float, bytes, tuple[str, int]]]:
        """(delay seconds, datagram, address) of the datagrams faults held back."""
        out, self.tx_later = self.tx_later, []
        return out

    def _tx_buffered(self):
        dp, ffi = self.dp, native.ffi
        for i in range(dp.ntx):
            data = ffi.buffer(dp.tx_bufs + i * TX_BUF, dp.tx_lens[i])[:]
            yield data, (_ip_str(dp.tx_addrs_be[i]), ROCEV2_PORT)

    def take_tx(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Every datagram to send, in order, as (bytes, address); empties the queues."""
        out, self.tx = self.tx, []
        out.extend(self._tx_buffered())
        self.dp.ntx = 0
        return out

    def complete(self, cq: CQ, e: CQEntry):
        """Write a CQE core/ produced, with the data plane's code for it."""
        c = native.ffi.new("struct rnic_cqe *", {
            "wr_id": e.wr_id, "status": e.status, "opcode": e.opcode,
            "byte_len": e.byte_len & 0xFFFFFFFF, "imm_data": e.imm_data, "qp_num": e.qp_num,
            "src_qp": e.src_qp, "wc_flags": e.wc_flags})
        native.lib.rnic_dp_cq_push(self.dp, cq.dp, c, int(e.solicited))

    def take_notifications(self):
        """Completion channels to signal since the last call; CQ overruns become events."""
        dp = self.dp
        for i in range(dp.nnotify):
            self.notify_cq(dp.notify[i])
        dp.nnotify = 0

    def notify_cq(self, uid: int):
        """The data plane (here or in an engine) reported CQ uid: signal its channel, and
        an overrun becomes IBV_EVENT_CQ_ERR."""
        cq = self.cqs.get(uid)
        if cq is None:
            return
        if cq.dp.overflow:
            cq.dp.overflow = 0
            self.counters.inc("cq_overflow")
            log.warning("CQ %d overrun: completions were lost", cq.handle)
            self.post_event(cq.owner, {"type": int(EventType.IBV_EVENT_CQ_ERR),
                                       "cq": cq.handle})
        if cq.channel is not None:
            self.notify.add(cq.channel)

    def post_event(self, owner, ev: dict):
        """An asynchronous event for owner's client; owner None: for every client. owner may
        also be a CM id's route (one connection of a shared context: its event channel)."""
        self.events.append((owner, ev))


@functools.lru_cache(maxsize=1024)
def _ip_str(addr_be: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("=I", addr_be)))

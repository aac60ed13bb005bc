"""Unreliable Datagram QPs (IBTA 9.8, 11.4 UD; RoCEv2 A17): one packet per message, an
address handle per send, Q_Key checked on receive, and the GRH (40 bytes) placed in front
of the payload in the receive buffer, as IBTA requires for UD receives (11.4.1.1).

No ACKs, no retransmission: a send completes when its packet is handed to the network; a
datagram for which no receive WQE is posted, or whose Q_Key does not match, is dropped and
counted.
"""
from __future__ import annotations

import ipaddress
import logging
import struct

from rnicd import native
from rnicd.core.qp_state import ATTR_FIELD, check_modify
from rnicd.core.resources import CQEntry, resolve_sges
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import (
    Access,
    EventType,
    QPAttrMask,
    QPState,
    SendFlags,
    WCFlags,
    WCOpcode,
    WCStatus,
    WROpcode,
    mtu_bytes,
)

log = logging.getLogger("rnicd.ud")
S = QPState
GRH_LEN = 40                 # IBTA 8.3 / A17.4.5.2: room for the GRH before UD payloads
QKEY_PRIVILEGED = 1 << 31    # a WR Q_Key with the high bit set means "use the QP's" (10.2.5)


class AddressHandle:
    """ibv_ah: where UD sends go. RoCEv2 addresses by GID; ours are IPv4-mapped."""

    def __init__(self, handle: int, pd, ah_attr: dict, peer_ip: str):
        self.handle, self.pd, self.ah_attr, self.peer_ip = handle, pd, ah_attr, peer_ip
        self.peer_ip_be = native.ipv4_be(peer_ip)


class UDQP:
    """A UD QP: the requester sends each WQE as one packet, the responder delivers each
    datagram to the next receive WQE. Same interface towards the device as RCQP."""

    def __init__(self, device, owner, handle, qp_num, pd, send_cq, recv_cq, srq, sq_ring, rq,
                 cap, sq_sig_all, qp_type):
        self.device, self.owner, self.handle, self.qp_num = device, owner, handle, qp_num
        self.qp_type, self.pd, self.send_cq, self.recv_cq, self.srq = (
            qp_type, pd, send_cq, recv_cq, srq)
        self.sq_ring, self.rq, self.cap, self.sq_sig_all = sq_ring, rq, cap, sq_sig_all
        self.state = S.IBV_QPS_RESET
        self.attr = {"qp_state": S.IBV_QPS_RESET, "qkey": 0, "pkey_index": 0, "port_num": 1,
                     "sq_psn": 0}
        self.peer_ip = None                       # UD has no single peer
        self.cm_id = None
        self.sq_next = 0
        self.psn = 0
        self.counters = device.counters.child()
        # the data plane never serves a UD QP (fast = 0); it only needs the table entry
        self.dp = native.ffi.new("struct rnic_dp_qp *", {"qpn": qp_num})

    # ---- verbs ---------------------------------------------------------------------------
    def modify(self, attr_mask: int, attr: dict, now: float):
        new = check_modify(self.qp_type, self.state, attr_mask, attr, self.device.qp_limits)
        for bit, name in ATTR_FIELD.items():          # the attributes the mask names
            if attr_mask & bit and name in self.attr and name != "qp_state":
                self.attr[name] = attr[name]
        if attr_mask & QPAttrMask.IBV_QP_SQ_PSN:
            self.psn = attr["sq_psn"]
        self.transition(new, "modify_qp", now)

    def transition(self, new: QPState, reason: str, now: float):
        old, self.state = self.state, new
        self.attr["qp_state"] = new
        if old != new:
            log.debug("ud qp %d: %s -> %s (%s)", self.qp_num, old.name, new.name, reason)
        if new == S.IBV_QPS_ERR:
            self._flush()
        elif new == S.IBV_QPS_RESET:
            self.sq_next = self.sq_ring.hdr.prod
            self.sq_ring.store_cons(self.sq_next)
            for ring in (self.sq_ring, self.rq.ring if self.rq is not None else None):
                if ring is not None:
                    ring.hdr.error = 0      # no longer in Error: posts need no flush

    def query(self) -> dict:
        a = dict(self.attr)
        a["qp_state"] = a["cur_qp_state"] = int(self.state)
        a["sq_psn"] = self.psn
        a["cap"] = vars(self.cap).copy()
        return a

    def counter_snapshot(self) -> dict[str, int]:
        return self.counters.snapshot()

    def destroy(self):
        self.state = S.IBV_QPS_RESET

    def deadline(self):
        return None

    def on_timer(self, now: float):
        pass

    # ---- requester -----------------------------------------------------------------------
    def pump(self, now: float):
        """Send every posted WQE: one UD_SEND_ONLY(_WITH_IMMEDIATE) packet each."""
        if self.state == S.IBV_QPS_ERR:
            return self._flush()
        if self.state not in (S.IBV_QPS_RTS, S.IBV_QPS_SQD):
            return
        ring = self.sq_ring
        prod = ring.load_prod()
        if (prod - ring.hdr.cons) & 0xFFFFFFFF > ring.num_entries:
            self.counters.inc("sq_ring_corrupt")
            return self.transition(S.IBV_QPS_ERR, "send queue producer index out of range", now)
        while self.sq_next != prod:
            w = ring.send_wqe(self.sq_next)
            status = self._send(w)
            flags, wr_id = int(w.send_flags), int(w.wr_id)
            # the slot is free before its completion shows (as in native rnic_dp_retire)
            self.sq_next = (self.sq_next + 1) & 0xFFFFFFFF
            ring.store_cons(self.sq_next)
            if status != WCStatus.IBV_WC_SUCCESS or self.sq_sig_all or \
                    flags & SendFlags.IBV_SEND_SIGNALED:
                self.device.complete(self.send_cq, CQEntry(
                    wr_id=wr_id, status=status, opcode=WCOpcode.IBV_WC_SEND,
                    qp_num=self.qp_num))
            if status != WCStatus.IBV_WC_SUCCESS:     # a UD send error ends in SQE/ERR
                return self.transition(S.IBV_QPS_ERR, f"UD send failed: {status.name}", now)

    def _send(self, w) -> WCStatus:
        opcode = int(w.opcode)
        if opcode not in (WROpcode.IBV_WR_SEND, WROpcode.IBV_WR_SEND_WITH_IMM):
            return WCStatus.IBV_WC_LOC_QP_OP_ERR
        ah = self.owner.ahs.get(int(w.ah))
        if ah is None or ah.pd is not self.pd:
            return WCStatus.IBV_WC_LOC_QP_OP_ERR
        flags = int(w.send_flags)
        if flags & SendFlags.IBV_SEND_INLINE:
            n = int(w.inline_len)
            if n > self.cap.max_inline_data:
                return WCStatus.IBV_WC_LOC_LEN_ERR
            payload = bytes(native.ffi.buffer(w.sg, n))
        else:
            nsge = int(w.num_sge)
            if nsge > self.cap.max_send_sge:
                return WCStatus.IBV_WC_LOC_LEN_ERR
            sgl, status = resolve_sges(self.device, self.pd, [
                (int(w.sg[i].addr), int(w.sg[i].length), int(w.sg[i].lkey))
                for i in range(nsge)], Access(0))
            if sgl is None:
                return status
            payload = b"".join(bytes(p) for p in sgl.pieces)
        if len(payload) > mtu_bytes(self.device.active_mtu):   # one packet (IBTA 9.8.3)
            return WCStatus.IBV_WC_LOC_LEN_ERR
        qkey = int(w.remote_qkey)
        if qkey & QKEY_PRIVILEGED:
            qkey = self.attr["qkey"]
        imm = opcode == WROpcode.IBV_WR_SEND_WITH_IMM
        opcode = op.send_opcode(op.Position.ONLY, imm, transport=op.Transport.UD)
        pkt = roce.Packet(opcode=opcode, dest_qp=int(w.remote_qpn), psn=self.psn,
                          se=bool(flags & SendFlags.IBV_SEND_SOLICITED),
                          deth_qkey=qkey, deth_src_qp=self.qp_num)
        if imm:
            pkt.imm = int(w.imm_data)
        self.psn = roce.psn_add(self.psn, 1)
        self.device.emit_to(ah.peer_ip, ah.peer_ip_be, pkt, payload)
        self.counters.inc("ud_sent")
        return WCStatus.IBV_WC_SUCCESS

    def _flush(self):
        ring = self.sq_ring
        prod = ring.load_prod()
        if (prod - ring.hdr.cons) & 0xFFFFFFFF > ring.num_entries:
            prod = ring.hdr.cons
        while self.sq_next != prod:
            w = ring.send_wqe(self.sq_next)
            self.device.complete(self.send_cq, CQEntry(
                wr_id=int(w.wr_id), status=WCStatus.IBV_WC_WR_FLUSH_ERR,
                opcode=WCOpcode.IBV_WC_SEND, qp_num=self.qp_num))
            self.sq_next = (self.sq_next + 1) & 0xFFFFFFFF
            ring.store_cons(self.sq_next)
        self.sq_ring.hdr.error = 1          # later posts ring the doorbell: flushed here
        if self.rq is not None:
            while (wqe := self.rq.take()) is not None:
                self.device.complete(self.recv_cq, CQEntry(
                    wr_id=wqe.wr_id, status=WCStatus.IBV_WC_WR_FLUSH_ERR,
                    opcode=WCOpcode.IBV_WC_RECV, qp_num=self.qp_num))
            self.rq.ring.hdr.error = 1

    # ---- responder -----------------------------------------------------------------------
    def receive(self, pkt: roce.Packet, info: op.OpInfo, src_ip: str, dst_ip: str, now: float):
        """A UD datagram for this QP (IBTA 9.8.2: Q_Key check, then a receive WQE)."""
        if self.state not in (S.IBV_QPS_RTR, S.IBV_QPS_RTS, S.IBV_QPS_SQD):
            return self.counters.inc("rcvd_in_bad_state")
        if pkt.deth_qkey != self.attr["qkey"]:
            return self.counters.inc("qkey_violation")          # silently dropped (9.8.2)
        if self.srq is not None:
            wqe, limit_hit = self.srq.take()
            if limit_hit:
                self.device.post_event(self.srq.owner, {
                    "type": int(EventType.IBV_EVENT_SRQ_LIMIT_REACHED), "srq": self.srq.handle})
        else:
            wqe = self.rq.take()
        if wqe is None:
            return self.counters.inc("ud_no_recv_wqe")          # no RNR for UD: dropped
        if wqe.too_many_sges:          # more SGEs than the cap: a malformed WQE
            sgl, status = None, WCStatus.IBV_WC_LOC_LEN_ERR
        else:
            sgl, status = resolve_sges(self.device, self.pd, wqe.sges,
                                       Access.IBV_ACCESS_LOCAL_WRITE)
        payload = bytes(pkt.payload)
        e = CQEntry(wr_id=wqe.wr_id, status=status, opcode=WCOpcode.IBV_WC_RECV,
                    byte_len=GRH_LEN + len(payload), qp_num=self.qp_num,
                    src_qp=pkt.deth_src_qp, wc_flags=WCFlags.IBV_WC_GRH, solicited=pkt.se)
        if sgl is not None and not sgl.scatter(0, grh_ipv4(src_ip, dst_ip, len(payload))
                                              + payload):
            e.status = WCStatus.IBV_WC_LOC_LEN_ERR
        if info.immdt:
            e.imm_data, e.wc_flags = pkt.imm, e.wc_flags | WCFlags.IBV_WC_WITH_IMM
        self.counters.inc("ud_rcvd")
        self.device.complete(self.recv_cq, e)


def grh_ipv4(src_ip: str, dst_ip: str, payload_len: int) -> bytes:
    """The 40 bytes before a UD payload for RoCEv2 over IPv4 (A17.4.5.2): 20 bytes of zero,
    then the IPv4 header of the datagram as received."""
    total = 20 + 8 + 12 + 8 + payload_len + 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                      ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed)
    return bytes(20) + hdr

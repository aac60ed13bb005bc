"""Unreliable Datagram QPs (IBTA 9.8, 11.4 UD; RoCEv2 A17): one packet per message, an
address handle per send, Q_Key checked on receive, and the GRH (40 bytes) placed in front
of the payload in the receive buffer, as IBTA requires for UD receives (11.4.1.1).

No ACKs, no retransmission: a send completes when its packet is handed to the network; a
datagram for which no receive WQE is posted, or whose Q_Key does not match, is dropped and
counted.
"""
from __future__ import annotations

import errno
import logging

from rnicd import native
from rnicd.core.qp_state import ATTR_FIELD, check_modify
from rnicd.core.resources import CQEntry
from rnicd.core.roce.dpstate import dp_own_rq
from rnicd.wire import opcodes as op
from rnicd.wire import roce
from rnicd.wire.abi import (
    EventType,
    QPAttrMask,
    QPState,
    WCFlags,
    WCOpcode,
    WCStatus,
    mtu_bytes,
)

log = logging.getLogger("rnicd.ud")
S = QPState
GRH_LEN = native.lib.RNIC_UD_GRH_LEN   # IBTA 11.4.1.1: the GRH before UD payloads


class AddressHandle:
    """ibv_ah: where UD sends go. RoCEv2 addresses by GID; ours are IPv4-mapped. Its handle
    is device-wide: the index of its record (struct rnic_dp_ah) in the data plane's table,
    where the engines find the address of a WQE's AH (rnic_dp_swqe_load)."""

    def __init__(self, device, pd, ah_attr: dict, peer_ip: str):
        self.pd, self.ah_attr, self.peer_ip = pd, ah_attr, peer_ip
        self.handle, self.dp = device.add_ah(pd, peer_ip)


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
        self.counters = device.counters.child()
        # The data plane sends (rnic_dp_pump, in RTS) and receives (rx_ud, in RTR/RTS/SQD with
        # an RQ of its own); core/ takes what it leaves, with the same C: a bad send WQE
        # (rnic_dp_swqe_load), datagrams for an SRQ or with no WQE posted (rnic_dp_recv_begin/
        # _place, rnic_dp_ud_grh). The SQ indices and the PSN live in the record (dp).
        ffi = native.ffi
        n, sge = sq_ring.num_entries, max(1, cap.max_send_sge)
        rsge = (srq.rq if srq is not None else rq).max_sge
        self._swqes = native.shared_new("struct rnic_dp_swqe[]", n)
        self._pieces = native.shared_new("struct rnic_dp_piece[]", n * sge)
        self._recv_pieces = native.shared_new("struct rnic_dp_piece[]", max(1, rsge))
        self._hdr = ffi.new("struct rnic_send_wqe *")     # the header rnic_dp_swqe_load copied
        self.dp = native.shared_new("struct rnic_dp_qp *", {
            "qpn": qp_num, "ud": 1, "unreliable": 1, "pd": pd.uid, "swqes": self._swqes,
            "swqe_mask": n - 1, "sq": sq_ring.hdr, "scq": send_cq.dp, "sq_sig_all": sq_sig_all,
            "cwnd": native.lib.RNIC_DP_WINDOW,    # no window: WQEs this far ahead are fetched
            "sq_entries": ffi.cast("uint8_t *", sq_ring.hdr) + sq_ring.hdr_size,
            "sq_entry_size": sq_ring.entry_size, "sq_pieces": self._pieces,
            "sq_piece_stride": sge, "max_send_sge": cap.max_send_sge,
            "max_inline": cap.max_inline_data, "recv_pieces": self._recv_pieces,
            "recv_max_sge": rsge, "mtu": mtu_bytes(device.active_mtu),
            "rcq": recv_cq.dp if recv_cq is not None else ffi.NULL})
        if rq is not None:
            dp_own_rq(self.dp, rq, ffi)

    # ---- verbs ---------------------------------------------------------------------------
    def modify(self, attr_mask: int, attr: dict, now: float):
        new = check_modify(self.qp_type, self.state, attr_mask, attr, self.device.qp_limits)
        for bit, name in ATTR_FIELD.items():          # the attributes the mask names
            if attr_mask & bit and name in self.attr and name != "qp_state":
                self.attr[name] = attr[name]
        if attr_mask & QPAttrMask.IBV_QP_SQ_PSN:
            dp = self.dp
            dp.next_psn = dp.send_psn = dp.una = dp.high_psn = attr["sq_psn"] & 0xFFFFFF
        self.dp.qkey = self.attr["qkey"]
        self.transition(new, "modify_qp", now)

    def transition(self, new: QPState, reason: str, now: float):
        old, self.state = self.state, new
        self.attr["qp_state"] = new
        # the data plane receives in the states that accept datagrams (IBTA 10.3.1), into
        # our own RQ (an SRQ's WQEs and its limit event are core/'s)
        self.dp.fast = int(new in (S.IBV_QPS_RTR, S.IBV_QPS_RTS, S.IBV_QPS_SQD)
                           and self.rq is not None)
        self.dp.send_ok = int(new == S.IBV_QPS_RTS)   # SQD: no new WQE starts (IBTA 10.3.1)
        if old != new:
            log.debug("ud qp %d: %s -> %s (%s)", self.qp_num, old.name, new.name, reason)
        if new == S.IBV_QPS_ERR:
            self._flush()
        elif new == S.IBV_QPS_RESET:
            self._skip_to(self.sq_ring.hdr.prod)
            for ring in (self.sq_ring, self.rq.ring if self.rq is not None else None):
                if ring is not None:
                    ring.hdr.error = 0      # no longer in Error: posts need no flush

    def query(self) -> dict:
        a = dict(self.attr)
        a["qp_state"] = a["cur_qp_state"] = int(self.state)
        a["sq_psn"] = self.dp.next_psn
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
        """The data plane sends every good WQE, one UD SEND ONLY (with immediate) packet each,
        and completes it (rnic_dp_pump); a WQE it leaves at sq_next is bad (it completes in
        error and the QP fails, IBTA 11.6.2, as rxe), or was posted after it looked (the
        program posts while the engines are held): pumped again."""
        if self.state == S.IBV_QPS_ERR:
            return self._flush()
        if self.state != S.IBV_QPS_RTS:
            return
        lib, dev, dp = native.lib, self.device, self.dp
        dev.dp.now = now
        while True:
            rc = lib.rnic_dp_pump(dev.dp, dp)
            if rc == lib.RNIC_DP_PUMP_TX_FULL:
                dev.spill_tx()
                continue
            if rc != lib.RNIC_DP_PUMP_FETCH:
                return
            pending = lib.rnic_dp_sq_pending(dp)
            if pending < 0:
                self.counters.inc("sq_ring_corrupt")
                return self.transition(S.IBV_QPS_ERR, "send queue producer index out of "
                                       "range", now)
            if pending == 0:
                return
            lib.rnic_dp_swqe_load(dev.dp, dp, self._hdr)
            d = self._swqes + (dp.sq_next & dp.swqe_mask)
            if d.status < 0:                # a good one, posted since the pump looked
                continue
            status, wr_id = WCStatus(d.status), int(d.wr_id)
            d.npieces = 0                   # no pointer outlives the WQE
            self._skip_to((dp.sq_next + 1) & 0xFFFFFFFF)
            self.device.complete(self.send_cq, CQEntry(
                wr_id=wr_id, status=status, opcode=WCOpcode.IBV_WC_SEND, qp_num=self.qp_num))
            return self.transition(S.IBV_QPS_ERR, f"UD send failed: {status.name}", now)

    def _skip_to(self, idx: int):
        """Every SQ slot before idx is done: the record's indices and the ring's cons."""
        self.dp.sq_head = self.dp.sq_next = idx
        self.sq_ring.store_cons(idx)

    def _flush(self):
        ring = self.sq_ring
        prod = ring.load_prod()
        if (prod - ring.hdr.cons) & 0xFFFFFFFF > ring.num_entries:
            prod = ring.hdr.cons
        while self.dp.sq_head != prod:
            w = ring.send_wqe(self.dp.sq_head)
            self.device.complete(self.send_cq, CQEntry(
                wr_id=int(w.wr_id), status=WCStatus.IBV_WC_WR_FLUSH_ERR,
                opcode=WCOpcode.IBV_WC_SEND, qp_num=self.qp_num))
            self._skip_to((self.dp.sq_head + 1) & 0xFFFFFFFF)
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
        # the receive WQE's buffers with the data plane's check (more SGEs than the cap:
        # LOC_LEN_ERR; a bad lkey: LOC_PROT_ERR), then the GRH and payload placed
        lib, dp = native.lib, self.dp
        sg = native.ffi.new("struct rnic_sge[]", wqe.sges or 1)
        rc = lib.rnic_dp_recv_begin(self.device.dp, dp, wqe.wr_id, sg, wqe.num_sge)
        payload = bytes(pkt.payload)
        e = CQEntry(wr_id=wqe.wr_id, status=WCStatus.IBV_WC_SUCCESS if rc == 0
                    else WCStatus.IBV_WC_LOC_LEN_ERR if rc == -errno.EINVAL
                    else WCStatus.IBV_WC_LOC_PROT_ERR, opcode=WCOpcode.IBV_WC_RECV,
                    byte_len=GRH_LEN + len(payload), qp_num=self.qp_num,
                    src_qp=pkt.deth_src_qp, wc_flags=WCFlags.IBV_WC_GRH, solicited=pkt.se)
        if rc == 0:
            grh = native.ffi.new("uint8_t[]", GRH_LEN)
            lib.rnic_dp_ud_grh(grh, native.ipv4_be(src_ip), native.ipv4_be(dst_ip),
                               roce.wire_len(pkt.opcode, len(payload)))
            data = native.ffi.buffer(grh)[:] + payload
            if lib.rnic_dp_recv_place(dp, data, len(data)) < 0:
                e.status = WCStatus.IBV_WC_LOC_LEN_ERR
            dp.recv_npieces = 0
        if info.immdt:
            e.imm_data, e.wc_flags = pkt.imm, e.wc_flags | WCFlags.IBV_WC_WITH_IMM
        self.counters.inc("ud_rcvd")
        self.device.complete(self.recv_cq, e)


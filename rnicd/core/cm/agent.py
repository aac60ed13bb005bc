"""The device's communication manager: QP1 (the GSI) for CM MADs, and every connection's
state machine (IBTA 12.9), driven by consumer verbs, received MADs and timers. Sans-I/O like
the rest of core/: MADs leave through device.emit_to(), events through device.post_event().

What the daemon does to a connection's QP is what the Linux rdma_cm does for its consumers:
INIT -> RTR -> RTS with the peer's QPN and PSN from the REQ/REP, ERR on disconnect (which
flushes every outstanding work request: nothing is lost silently). Timers: a REQ, REP or
DREQ is resent every CM response timeout, max_cm_retries times (IBTA 12.7.27, 12.7.36).
UD ids (RDMA_PS_UDP) resolve their peer with SIDR instead: core/cm/sidr.py.
"""
from __future__ import annotations

import logging

from rnicd.core import qp_state
from rnicd.core.cm.conn import CMId, CMState
from rnicd.core.cm.offload import BACKLOG_FULL, Offload
from rnicd.core.cm.sidr import SidrMixin
from rnicd.errors import VerbsError, einval
from rnicd.wire import cma, mad, roce
from rnicd.wire import opcodes as op
from rnicd.wire.abi import RC_ACCESS, Access, QPAttrMask, QPState, QPType
from rnicd.wire.cma import CMEventType as E

log = logging.getLogger("rnicd.cm")
St = CMState
M = QPAttrMask

CM_RESPONSE_TIMEOUT = 17     # 4.096 us * 2^17 = 0.54 s between resends (rdma_cm uses 20)
MAX_CM_RETRIES = 7           # rdma_cm uses 15; 7 resends give up after about 4 s
MRA_SERVICE_TIMEOUT = 21     # 8.6 s: what an MRA asks a peer to wait for a slow consumer
TIMEWAIT = 1.0               # s a disconnected record keeps answering late DREQs
DEFAULT_BACKLOG = 1024
LOCAL_ACK_TIMEOUT = 14       # the QP's timeout code (67 ms), also sent in the REQ
EPHEMERAL = (32768, 60999)   # Linux's ip_local_port_range: ports for active ids
_UD_SEND = op.send_opcode(op.Position.ONLY, transport=op.Transport.UD)


def cm_timeout(code: int) -> float:
    """A 5-bit CM timeout code -> seconds (IBTA 12.6.5: 4.096 us * 2^code)."""
    return 4.096e-6 * (1 << code)


class CMAgent(SidrMixin):
    def __init__(self, device):
        self.device = device
        self.rng = device.rng
        self.counters = device.counters
        self.by_comm_id: dict[int, CMId] = {}               # our local comm ID -> id
        self.by_remote: dict[tuple[str, int], CMId] = {}    # (peer ip, its comm ID) -> id
        self.listeners: dict[tuple[int, int], CMId] = {}    # (port space, port) -> id
        self.timed: set[CMId] = set()                       # ids with a deadline
        self._psn = 0
        self._rx_tid = 0                                    # TransactionID being handled

    # ---- consumer verbs (called by api/session.py with checked arguments) ----------------
    def listen(self, cid: CMId, port: int, backlog: int, offload: Offload | None = None) -> int:
        if cid.state != St.IDLE:
            raise einval(f"listen: CM id {cid.handle} is {cid.state.value}, not idle")
        if offload is not None and cid.ud:
            raise VerbsError(95, "listen: establishment offload connects RC QPs; a UD "
                             "(SIDR) id cannot use it (EOPNOTSUPP)")
        if port == 0:
            port = self._free_port()
        if (cid.ps, port) in self.listeners:
            raise VerbsError(98, f"listen: port {port} of {cma.PORT_SPACES[cid.ps]} is "
                             "already being listened on (EADDRINUSE)")
        cid.state, cid.local_port, cid.local_ip = St.LISTEN, port, self.device.ip
        cid.backlog = backlog or DEFAULT_BACKLOG
        cid.offload = offload
        self.listeners[(cid.ps, port)] = cid
        return port

    def connect(self, cid: CMId, qp, dst_ip: str, port: int, param: dict, private_data: bytes,
                now: float):
        """rdma_connect: INIT the QP, send a REQ (IBTA 12.9.5.1); a UD id sends a SIDR_REQ.
        Without a QP (qp None) the REQ names conn_param's qp_num: the consumer moves that
        external QP itself (init_qp_attr) and answers the REP with establish()."""
        if cid.state != St.IDLE:
            raise einval(f"connect: CM id {cid.handle} is {cid.state.value}, not idle")
        if qp is not None:
            self._check_qp(cid, qp, "connect")
        if cid.ud:
            return self._sidr_connect(cid, qp, dst_ip, port, private_data, now)
        if qp is None and not param["qp_num"]:
            raise einval("connect: this id has no QP; create_qp first, or name the external "
                         "QP in conn_param.qp_num")
        if len(private_data) > cma.REQ_PRIVATE_DATA:
            raise einval(f"connect: private data is {len(private_data)} bytes; a REQ carries "
                         f"at most {cma.REQ_PRIVATE_DATA} after the rdma_cm header")
        if qp is not None:
            self._to_init(qp, now)
            cid.qp, qp.cm_id = qp, cid
            cid.xrc = qp.qp_type == QPType.IBV_QPT_XRC_SEND
        else:
            cid.qp_num, cid.srq = param["qp_num"], param["srq"]
        cid.local_ip, cid.remote_ip = self.device.ip, dst_ip
        cid.local_port, cid.remote_port = self._free_port(), port
        pdata = cma.req_private_data(self.device.ip, cid.local_port, dst_ip, private_data)
        cid.local_comm_id = self._new_comm_id(cid)
        cid.path_mtu = int(self.device.active_mtu)
        srq = int(qp.srq is not None) if qp is not None else cid.srq
        cid.req = mad.CmReq(
            local_comm_id=cid.local_comm_id, service_id=cma.service_id(port, cid.ps),
            local_qpn=cid.local_qpn, starting_psn=self._psn_of(cid),
            local_ca_guid=self.device.node_guid,
            responder_resources=param["responder_resources"],
            initiator_depth=param["initiator_depth"],
            remote_cm_response_timeout=CM_RESPONSE_TIMEOUT,
            local_cm_response_timeout=CM_RESPONSE_TIMEOUT,
            retry_count=param["retry_count"], rnr_retry_count=param["rnr_retry_count"],
            path_mtu=cid.path_mtu, max_cm_retries=MAX_CM_RETRIES, srq=srq,
            end_to_end_flow_control=param["flow_control"],
            transport_service_type=(mad.TransportServiceType.XRC if cid.xrc
                                    else mad.TransportServiceType.RC),
            extended_transport_type=int(cid.xrc),
            primary_local_gid=self.device.gid, primary_remote_gid=roce.ipv4_mapped_gid(dst_ip),
            primary_hop_limit=64, primary_subnet_local=1, primary_traffic_class=cid.tos,
            primary_local_ack_timeout=LOCAL_ACK_TIMEOUT, private_data=pdata)
        cid.conn_param = param
        cid.responder_resources = param["responder_resources"]
        cid.state = St.REQ_SENT
        self._send(cid, cid.req, now, timed=True)

    def accept(self, cid: CMId, qp, param: dict, private_data: bytes, now: float):
        """rdma_accept: INIT -> RTR -> RTS from the REQ, then send a REP (12.9.5.2); a SIDR
        request gets a SIDR_REP. Without a QP (qp None) the REP names conn_param's qp_num,
        an external QP the consumer moved itself (init_qp_attr)."""
        if cid.state != St.REQ_RCVD:
            raise einval(f"accept: CM id {cid.handle} is {cid.state.value}; only a connection "
                         "request (from get_request / CONNECT_REQUEST) can be accepted")
        if qp is not None:
            self._check_qp(cid, qp, "accept")
        if cid.ud:
            return self._sidr_accept(cid, qp, param, private_data, now)
        if qp is None and not param["qp_num"]:
            raise einval("accept: this id has no QP; create_qp on the new id first, or name "
                         "the external QP in conn_param.qp_num")
        if len(private_data) > mad.private_data_len(mad.CmRep):
            raise einval(f"accept: private data is {len(private_data)} bytes; a REP carries "
                         f"at most {mad.private_data_len(mad.CmRep)}")
        req = cid.req
        cid.initiator_depth = max(min(param["initiator_depth"], req.responder_resources), 1)
        cid.responder_resources = min(param["responder_resources"], req.initiator_depth) or 1
        cid.retry, cid.rnr_retry = req.retry_count, req.rnr_retry_count
        if qp is not None:
            cid.qp, qp.cm_id = qp, cid
            self._to_rts(qp, cid, now)
            srq = int(qp.srq is not None)
        else:
            cid.qp_num, cid.srq = param["qp_num"], param["srq"]
            srq = cid.srq
        rep = mad.CmRep(
            local_comm_id=cid.local_comm_id, remote_comm_id=cid.remote_comm_id,
            local_qpn=cid.local_qpn, starting_psn=self._psn_of(cid),
            responder_resources=cid.responder_resources,
            initiator_depth=min(param["initiator_depth"], req.responder_resources),
            target_ack_delay=15, rnr_retry_count=param["rnr_retry_count"], srq=srq,
            local_ca_guid=self.device.node_guid, private_data=private_data)
        cid.state = St.REP_SENT
        self._send(cid, rep, now, timed=True)

    def reject(self, cid: CMId, private_data: bytes, now: float,
               reason: int = mad.RejReason.CONSUMER_DEFINED):
        if cid.state != St.REQ_RCVD:
            raise einval(f"reject: CM id {cid.handle} is {cid.state.value}; only a connection "
                         "request can be rejected")
        if cid.ud:
            return self._sidr_reject(cid, private_data)
        if len(private_data) > mad.private_data_len(mad.CmRej):
            raise einval(f"reject: private data is {len(private_data)} bytes; a REJ carries "
                         f"at most {mad.private_data_len(mad.CmRej)}")
        self._send_rej(cid, reason, now, private_data=private_data)
        self._close(cid)

    def disconnect(self, cid: CMId, now: float, private_data: bytes = b""):
        """rdma_disconnect: the QP goes to ERR (its outstanding WRs complete with
        WR_FLUSH_ERR) and a DREQ goes out (12.9.5.5); DISCONNECTED follows the DREP."""
        s = cid.state
        if cid.ud:
            raise einval(f"disconnect: CM id {cid.handle} is a UD (SIDR) id; it has no "
                         "connection to end")
        if s in (St.DREQ_SENT, St.TIMEWAIT):
            return                                  # already disconnecting: nothing to do
        if s in (St.REQ_SENT, St.REQ_RCVD, St.REP_RCVD):
            self._send_rej(cid, mad.RejReason.CONSUMER_DEFINED, now)
            self._qp_error(cid, now)
            return self._close(cid)
        if s not in (St.ESTABLISHED, St.REP_SENT):
            raise einval(f"disconnect: CM id {cid.handle} is {s.value}, not connected")
        self._qp_error(cid, now)
        cid.state = St.DREQ_SENT
        self._send(cid, mad.CmDreq(local_comm_id=cid.local_comm_id,
                                   remote_comm_id=cid.remote_comm_id,
                                   remote_qpn=cid.remote_qpn, private_data=private_data),
                   now, timed=True)

    def establish(self, cid: CMId, now: float):
        """rdma_establish: the active side of a connection without a QP on its id moved its
        external QP to RTS after CONNECT_RESPONSE; the RTU goes out (12.9.5.1)."""
        if cid.state != St.REP_RCVD:
            raise einval(f"establish: CM id {cid.handle} is {cid.state.value}; establish "
                         "answers a CONNECT_RESPONSE (connect without a QP on the id)")
        cid.state = St.ESTABLISHED
        self._send(cid, mad.CmRtu(local_comm_id=cid.local_comm_id,
                                  remote_comm_id=cid.remote_comm_id), now)

    def set_option(self, cid: CMId, level: int, name: int, value: int):
        """rdma_set_option with an integer value (checked by the api layer)."""
        if level == cma.RDMA_OPTION_ID and name == cma.RDMA_OPTION_ID_TOS:
            if not 0 <= value <= 255:
                raise einval(f"set_option: TOS {value} is not a byte")
            cid.tos = value
        elif level == cma.RDMA_OPTION_ID and name == cma.RDMA_OPTION_ID_ACK_TIMEOUT:
            if not 0 <= value <= 31:
                raise einval(f"set_option: ACK timeout code {value} is not 0..31")
            cid.ack_timeout = value
        elif level == cma.RDMA_OPTION_ID and name in (cma.RDMA_OPTION_ID_REUSEADDR,
                                                     cma.RDMA_OPTION_ID_AFONLY):
            pass    # each port space has its own ports; IPv4 only: both hold already
        elif level == cma.RDMA_OPTION_IB and name == cma.RDMA_OPTION_IB_PATH:
            raise VerbsError(95, "set_option: RDMA_OPTION_IB_PATH sets IB SA paths; on RoCE "
                             "the IP route is the path (EOPNOTSUPP)")
        else:
            raise VerbsError(38, f"set_option: no option {name} at level {level} (ENOSYS)")

    def init_qp_attr(self, cid: CMId, state: QPState) -> tuple[int, dict]:
        """rdma_init_qp_attr: (mask, attributes) that move the id's QP, or an external
        one, to `state` (INIT, RTR or RTS) for this connection."""
        if cid.ud:
            return self._ud_qp_attr(cid, state)
        if state == QPState.IBV_QPS_INIT:
            access = Access(0)
            if cid.req is not None:   # ib_cm: remote write, read/atomic with resources
                access = Access.IBV_ACCESS_REMOTE_WRITE | Access.IBV_ACCESS_LOCAL_WRITE
                if cid.responder_resources:
                    access |= Access.IBV_ACCESS_REMOTE_READ | Access.IBV_ACCESS_REMOTE_ATOMIC
            return (M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT
                    | M.IBV_QP_ACCESS_FLAGS,
                    {"qp_state": state, "pkey_index": 0, "port_num": 1,
                     "qp_access_flags": int(access)})
        if state not in (QPState.IBV_QPS_RTR, QPState.IBV_QPS_RTS):
            raise einval(f"init_qp_attr: rdma_cm gives attributes for INIT, RTR and RTS, not "
                         f"{QPState(state).name}")
        if cid.state not in (St.REQ_RCVD, St.REP_RCVD, St.REP_SENT, St.ESTABLISHED):
            raise einval(f"init_qp_attr: CM id {cid.handle} is {cid.state.value}; RTR and "
                         "RTS need the peer's QPN and PSN (a REQ or REP)")
        return self._rc_qp_attr(cid, state)

    def destroy(self, cid: CMId, now: float):
        """rdma_destroy_id, or the consumer died (owner gone): a connection is torn down on
        its behalf (DREQ when connected, REJ while connecting); the record lives on, without
        an owner, until the peer answers or the retries run out."""
        if cid.state == St.LISTEN:
            if self.listeners.get((cid.ps, cid.local_port)) is cid:
                del self.listeners[(cid.ps, cid.local_port)]
            for child in list(cid.children):
                if child.state == St.REQ_RCVD:     # nobody will answer these any more
                    self.destroy(child, now)
        if cid.ud and cid.state != St.LISTEN:
            self._sidr_destroy(cid)
        elif cid.state in (St.ESTABLISHED, St.REP_SENT):
            self.disconnect(cid, now)
        elif cid.state in (St.REQ_SENT, St.REQ_RCVD, St.REP_RCVD):
            self._send_rej(cid, mad.RejReason.CONSUMER_DEFINED, now)
            self._close(cid)
        cid.owner = None                            # no events any more
        if cid.qp is not None and cid.qp.cm_id is cid:
            cid.qp.cm_id = None                     # the QP may serve another id
        cid.qp = None                               # the owner's QPs go with it
        if cid.state in (St.IDLE, St.LISTEN, St.CLOSED):
            self._close(cid)

    def abort_owner(self, owner, ids, now: float):
        """A client's connection to the daemon closed (its process may have died):
        disconnect every connection it had, so that peers see DISCONNECTED now rather than
        after their QPs' retries run out (abortive close, docs/connection-management.md)."""
        for cid in sorted(ids, key=lambda c: c.state != St.LISTEN):   # listeners first
            self.destroy(cid, now)
            self.counters.inc("cm_aborted_by_owner_exit")

    # ---- received MADs -------------------------------------------------------------------
    def receive(self, pkt: roce.Packet, src_ip: str, now: float):
        """A UD SEND to QP1 (IBTA 13.5.1): untrusted; bad ones are counted and dropped."""
        c = self.counters
        if pkt.deth_qkey != mad.GSI_QKEY:
            return c.inc("cm_rx_drop_bad_qkey")
        try:
            hdr, msg = mad.unpack(pkt.payload)
        except mad.MalformedMAD as exc:
            return c.inc(f"cm_rx_drop_{exc.reason}")
        c.inc("cm_rx_mads")
        self._rx_tid = hdr.transaction_id
        handler = self._HANDLERS[type(msg)]
        handler(self, msg, src_ip, now)

    def _on_req(self, req: mad.CmReq, src: str, now: float):
        dup = self.by_remote.get((src, req.local_comm_id))
        if dup is not None:                         # our REP/MRA was lost, or is slow
            self.counters.inc("cm_rx_dup_req")
            if dup.state == St.REQ_RCVD:
                return self._send(dup, mad.CmMra(local_comm_id=dup.local_comm_id,
                                                 remote_comm_id=dup.remote_comm_id,
                                                 message_mraed=mad.MsgRef.REQ,
                                                 service_timeout=MRA_SERVICE_TIMEOUT), now)
            if dup.state == St.REP_SENT and dup.last_mad:
                return self._emit(src, dup.last_mad)
            return
        split = cma.split_service_id(req.service_id)
        listener = self.listeners.get(split) if split is not None else None
        reason = None
        if listener is None or listener.ud:
            reason = mad.RejReason.INVALID_SERVICE_ID
        elif (req.transport_service_type, req.extended_transport_type) not in (
                (mad.TransportServiceType.RC, 0), (mad.TransportServiceType.XRC, 1)):
            reason = mad.RejReason.INVALID_TRANSPORT_TYPE
        elif not 1 <= req.path_mtu <= int(self.device.active_mtu):
            reason = mad.RejReason.INVALID_MTU
        elif self._pending(listener) >= listener.backlog:
            reason = mad.RejReason.CONSUMER_DEFINED
        if reason is not None:
            self.counters.inc(f"cm_tx_rej_{mad.RejReason(reason).name.lower()}")
            return self._emit_msg(src, mad.CmRej(
                local_comm_id=0, remote_comm_id=req.local_comm_id, reason=reason,
                private_data=BACKLOG_FULL if reason == mad.RejReason.CONSUMER_DEFINED else b""),
                self._tid())
        cid = CMId(listener.owner, listener.owner.new_handle(), listener.ps)
        listener.owner.cm_ids[cid.handle] = cid
        cid.listener, cid.route = listener, listener.route   # the listener's channel
        cid.ack_timeout, cid.tos = listener.ack_timeout, listener.tos   # inherited options
        listener.children.add(cid)
        parsed = cma.parse_req_private_data(req.private_data)
        src_port, user = (parsed[1], parsed[3]) if parsed else (0, bytes(req.private_data))
        cid.req, cid.state = req, St.REQ_RCVD
        cid.xrc = req.transport_service_type == mad.TransportServiceType.XRC
        # until accept() negotiates them: what the REQ offers (ib_cm's REQ event)
        cid.responder_resources, cid.initiator_depth = (req.initiator_depth,
                                                        req.responder_resources)
        cid.retry, cid.rnr_retry = req.retry_count, req.rnr_retry_count
        cid.local_ip, cid.local_port = self.device.ip, listener.local_port
        cid.remote_ip, cid.remote_port = src, src_port
        cid.remote_comm_id, cid.remote_qpn = req.local_comm_id, req.local_qpn
        cid.remote_psn, cid.path_mtu = req.starting_psn, req.path_mtu
        cid.local_comm_id = self._new_comm_id(cid)
        self.by_remote[(src, req.local_comm_id)] = cid
        cid.private_data = user
        if listener.offload is not None:
            return self._offload_accept(cid, listener.offload, now)
        self._event(cid, E.RDMA_CM_EVENT_CONNECT_REQUEST, listen_id=listener.handle,
                    private_data=user, responder_resources=cid.responder_resources,
                    initiator_depth=cid.initiator_depth, retry_count=cid.retry,
                    rnr_retry_count=cid.rnr_retry, **self._conn_info(cid))

    def _on_rep(self, rep: mad.CmRep, src: str, now: float):
        cid = self._lookup(rep.remote_comm_id, src)
        if cid is None:
            return self.counters.inc("cm_rx_drop_stale")
        if cid.state == St.ESTABLISHED and cid.remote_comm_id == rep.local_comm_id:
            self.counters.inc("cm_rx_dup_rep")
            return self._emit(src, cid.last_mad)           # our RTU was lost: resend it
        if cid.state == St.REP_RCVD and cid.remote_comm_id == rep.local_comm_id:
            return self.counters.inc("cm_rx_dup_rep")      # the consumer has not established
        if cid.state != St.REQ_SENT or cid.ud:
            return self.counters.inc("cm_rx_drop_unexpected")
        cid.remote_comm_id, cid.remote_qpn = rep.local_comm_id, rep.local_qpn
        cid.remote_psn = rep.starting_psn
        self.by_remote[(src, rep.local_comm_id)] = cid
        param = cid.conn_param
        cid.responder_resources = max(rep.initiator_depth, 1)
        cid.initiator_depth = max(min(param["initiator_depth"], rep.responder_resources), 1)
        cid.retry, cid.rnr_retry = param["retry_count"], rep.rnr_retry_count
        if cid.qp is None and cid.qp_num:
            # an external QP: the consumer moves it (init_qp_attr), then establish() (RTU)
            cid.state = St.REP_RCVD
            self._disarm(cid)
            return self._event(cid, E.RDMA_CM_EVENT_CONNECT_RESPONSE,
                               private_data=bytes(rep.private_data), **self._conn_info(cid))
        try:
            if cid.qp is None:
                raise einval("the QP was destroyed")
            self._to_rts(cid.qp, cid, now)
        except VerbsError as exc:
            log.info("cm: REP for id %d cannot be applied: %s", cid.handle, exc)
            self._send_rej(cid, mad.RejReason.NO_QP, now)
            self._event(cid, E.RDMA_CM_EVENT_CONNECT_ERROR, status=-exc.code)
            return self._close(cid)
        cid.state = St.ESTABLISHED
        self._disarm(cid)
        self._send(cid, mad.CmRtu(local_comm_id=cid.local_comm_id,
                                  remote_comm_id=cid.remote_comm_id), now)
        self._event(cid, E.RDMA_CM_EVENT_ESTABLISHED, private_data=bytes(rep.private_data),
                    **self._conn_info(cid))

    def _on_rtu(self, rtu: mad.CmRtu, src: str, now: float):
        cid = self._lookup(rtu.remote_comm_id, src)
        if cid is None or cid.state != St.REP_SENT:
            return self.counters.inc("cm_rx_drop_unexpected")
        self._established(cid, now)

    def _on_rej(self, rej: mad.CmRej, src: str, now: float):
        cid = self._lookup(rej.remote_comm_id, src)
        if cid is None or cid.state not in (St.REQ_SENT, St.REP_SENT, St.REQ_RCVD,
                                            St.REP_RCVD) or cid.ud:
            return self.counters.inc("cm_rx_drop_stale")
        self.counters.inc("cm_rx_rej")
        if cid.listener is not None and cid.listener.offload is not None:
            cid.listener.offload.discard(cid.qp)
            cid.qp = None
        else:
            self._event(cid, E.RDMA_CM_EVENT_REJECTED, status=rej.reason,
                        private_data=bytes(rej.private_data), **self._conn_info(cid))
        self._close(cid)

    def _on_mra(self, mra: mad.CmMra, src: str, now: float):
        cid = self._lookup(mra.remote_comm_id, src)
        if cid is None or cid.state not in (St.REQ_SENT, St.REP_SENT):
            return self.counters.inc("cm_rx_drop_unexpected")
        # the peer's consumer is slow: wait its service timeout, then resend as before
        self._arm(cid, now + cm_timeout(mra.service_timeout) + cm_timeout(CM_RESPONSE_TIMEOUT))
        cid.retries_left = MAX_CM_RETRIES

    def _on_dreq(self, dreq: mad.CmDreq, src: str, now: float):
        cid = self._lookup(dreq.remote_comm_id, src)
        if cid is None or cid.state in (St.CLOSED, St.IDLE, St.LISTEN):
            # IBTA 12.9.6: answer a DREQ for a connection we no longer know with a DREP
            self.counters.inc("cm_rx_dreq_unknown")
            return self._emit_msg(src, mad.CmDrep(local_comm_id=dreq.remote_comm_id,
                                                  remote_comm_id=dreq.local_comm_id),
                                  self._tid())
        drep = mad.CmDrep(local_comm_id=cid.local_comm_id, remote_comm_id=cid.remote_comm_id)
        if cid.state == St.TIMEWAIT:
            return self._send(cid, drep, now)
        was_connected = cid.state in (St.ESTABLISHED, St.REP_SENT, St.DREQ_SENT)
        self._qp_error(cid, now)
        self._send(cid, drep, now)
        if was_connected:
            self._event(cid, E.RDMA_CM_EVENT_DISCONNECTED, private_data=bytes(dreq.private_data))
        self._timewait(cid, now)

    def _on_drep(self, drep: mad.CmDrep, src: str, now: float):
        cid = self._lookup(drep.remote_comm_id, src)
        if cid is None or cid.state != St.DREQ_SENT:
            return self.counters.inc("cm_rx_drop_unexpected")
        self._event(cid, E.RDMA_CM_EVENT_DISCONNECTED, private_data=bytes(drep.private_data))
        self._timewait(cid, now)

    _HANDLERS = {mad.CmReq: _on_req, mad.CmRep: _on_rep, mad.CmRtu: _on_rtu,
                 mad.CmRej: _on_rej, mad.CmMra: _on_mra, mad.CmDreq: _on_dreq,
                 mad.CmDrep: _on_drep, mad.CmSidrReq: SidrMixin._on_sidr_req,
                 mad.CmSidrRep: SidrMixin._on_sidr_rep}

    # ---- timers --------------------------------------------------------------------------
    def deadline(self) -> float | None:
        ds = [c.deadline for c in self.timed]
        ds += [lst.offload.deadline for lst in self.listeners.values()
               if lst.offload is not None and lst.offload.deadline is not None]
        return min(ds) if ds else None

    def on_timer(self, now: float):
        for lst in list(self.listeners.values()):
            if lst.offload is not None and lst.offload.deadline is not None \
                    and lst.offload.deadline <= now:
                self._notify_bulk(lst)
        for cid in [c for c in self.timed if c.deadline <= now]:
            if self._sidr_timer(cid, now):
                continue
            if cid.state == St.TIMEWAIT:
                self._close(cid)
                self._event(cid, E.RDMA_CM_EVENT_TIMEWAIT_EXIT)
            elif cid.retries_left > 0 and cid.last_mad is not None:
                cid.retries_left -= 1
                self.counters.inc("cm_tx_retries")
                self._emit(cid.remote_ip, cid.last_mad)
                self._arm(cid, now + cm_timeout(CM_RESPONSE_TIMEOUT))
            else:
                self._timed_out(cid, now)

    def _timed_out(self, cid: CMId, now: float):
        self.counters.inc("cm_timeouts")
        if cid.state == St.DREQ_SENT:              # the peer is gone: disconnected anyway
            self._event(cid, E.RDMA_CM_EVENT_DISCONNECTED)
            return self._timewait(cid, now)
        self._send_rej(cid, mad.RejReason.TIMEOUT, now)
        self._qp_error(cid, now)
        if cid.listener is not None and cid.listener.offload is not None:
            cid.listener.offload.discard(cid.qp)
            cid.qp = None
        elif cid.state == St.REQ_SENT:
            self._event(cid, E.RDMA_CM_EVENT_UNREACHABLE, status=-110)    # -ETIMEDOUT
        else:
            self._event(cid, E.RDMA_CM_EVENT_CONNECT_ERROR, status=-110)
        self._close(cid)

    # ---- offload -------------------------------------------------------------------------
    def _offload_accept(self, cid: CMId, off: Offload, now: float):
        try:
            qp = off.spawn(now)
        except VerbsError as exc:
            log.info("cm offload: cannot create a QP for a connection: %s", exc)
            self.counters.inc("cm_offload_no_resources")
            self._send_rej(cid, mad.RejReason.NO_RESOURCES, now)
            return self._close(cid)
        try:
            self.accept(cid, qp, off.conn_param, off.private_data, now)
        except VerbsError as exc:
            log.info("cm offload: accept failed: %s", exc)
            off.discard(qp)
            self._send_rej(cid, mad.RejReason.NO_QP, now)
            self._close(cid)

    def _notify_bulk(self, lst: CMId):
        conns = lst.offload.take()
        if conns and lst.owner is not None:
            self.counters.inc("cm_offload_notifications")
            self.device.post_event(lst.route or lst.owner, {
                "cm_event": int(E.RNIC_CM_EVENT_OFFLOAD_ESTABLISHED), "id": lst.handle,
                "conns": conns})

    # ---- helpers -------------------------------------------------------------------------
    def _established(self, cid: CMId, now: float):
        cid.state = St.ESTABLISHED
        self._disarm(cid)
        lst = cid.listener
        if lst is not None:
            lst.children.discard(cid)
        if lst is not None and lst.offload is not None:
            self.counters.inc("cm_offload_established")
            entry = dict(id=cid.handle, qp=cid.qp.handle, qp_num=cid.qp.qp_num,
                         private_data=cid.private_data, **self._conn_info(cid))
            if lst.offload.add(entry, now):
                self._notify_bulk(lst)
            return
        self._event(cid, E.RDMA_CM_EVENT_ESTABLISHED, **self._conn_info(cid))

    def _pending(self, lst: CMId) -> int:
        """What counts against a listener's backlog: handshakes not finished, plus
        offloaded connections not yet notified."""
        n = sum(1 for c in lst.children if c.handshaking)
        return n + (len(lst.offload.batch) if lst.offload is not None else 0)

    def _check_qp(self, cid: CMId, qp, verb: str):
        # XRC (Annex A14): the INI QP connects, the TGT QP accepts a REQ that says XRC
        if cid.ud:
            want = (QPType.IBV_QPT_UD,)
        elif verb == "connect":
            want = (QPType.IBV_QPT_RC, QPType.IBV_QPT_XRC_SEND)
        else:
            want = (QPType.IBV_QPT_XRC_RECV,) if cid.xrc else (QPType.IBV_QPT_RC,)
        if qp.qp_type not in want:
            raise einval(f"{verb}: a {cma.PORT_SPACES[cid.ps]} id uses a "
                         f"{' or '.join(t.name for t in want)} QP here, "
                         f"not {QPType(qp.qp_type).name}")
        if qp.owner is not cid.owner:
            raise einval(f"{verb}: the QP belongs to another context")
        if qp.cm_id is not None:
            raise einval(f"{verb}: QP {qp.qp_num} already belongs to a connection")
        if cid.ud:
            return
        if qp.state not in (QPState.IBV_QPS_RESET, QPState.IBV_QPS_INIT):
            raise einval(f"{verb}: QP {qp.qp_num} is {qp.state.name}; the CM moves it from "
                         "RESET or INIT itself")

    def _modify(self, qp, mask: int, now: float, **attr):
        """rdma_cm's RC attributes, less those the QP's type does not take in this
        transition (an XRC INI QP has no responder side, a TGT QP no requester side)."""
        allowed = qp_state.masks_for(qp.qp_type, qp.state, attr["qp_state"])
        if allowed is not None:
            mask &= allowed[0] | allowed[1] | QPAttrMask.IBV_QP_STATE
        qp.modify(int(mask), attr, now)

    def _to_init(self, qp, now: float):
        """RESET -> INIT with rdma_cm's access flags for RC (a client may have done it)."""
        if qp.state == QPState.IBV_QPS_RESET:
            self._modify(qp, M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT
                         | M.IBV_QP_ACCESS_FLAGS, qp_state=QPState.IBV_QPS_INIT, pkey_index=0,
                         port_num=1, qp_access_flags=int(RC_ACCESS), now=now)

    def _to_rts(self, qp, cid: CMId, now: float):
        """The QP transitions rdma_cm makes once both PSNs and QPNs are known."""
        self._to_init(qp, now)
        for state in (QPState.IBV_QPS_RTR, QPState.IBV_QPS_RTS):
            mask, attr = self._rc_qp_attr(cid, state)
            self._modify(qp, mask, now, **attr)

    def _rc_qp_attr(self, cid: CMId, state: QPState) -> tuple[int, dict]:
        """RTR or RTS of a connection's RC QP (ib_cm_init_qp_attr): the peer's QPN and PSN
        from the REQ/REP, the negotiated RDMA READ depths, our PSN; the ACK timeout from
        RDMA_OPTION_ID_ACK_TIMEOUT when set."""
        lim = self.device.limits
        if state == QPState.IBV_QPS_RTR:
            return (M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN
                    | M.IBV_QP_RQ_PSN | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER,
                    {"qp_state": state,
                     "ah_attr": {"is_global": 1, "port_num": 1, "grh": {
                         "dgid": roce.ipv4_mapped_gid(cid.remote_ip), "sgid_index": 0,
                         "hop_limit": 64, "traffic_class": cid.tos}},
                     "path_mtu": cid.path_mtu, "dest_qp_num": cid.remote_qpn,
                     "rq_psn": cid.remote_psn,
                     "max_dest_rd_atomic": min(max(cid.responder_resources, 1),
                                               lim.max_qp_rd_atom),
                     "min_rnr_timer": 12})
        timeout = LOCAL_ACK_TIMEOUT if cid.ack_timeout is None else cid.ack_timeout
        return (M.IBV_QP_STATE | M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY
                | M.IBV_QP_SQ_PSN | M.IBV_QP_MAX_QP_RD_ATOMIC,
                {"qp_state": state, "timeout": timeout, "retry_cnt": min(cid.retry, 7),
                 "rnr_retry": min(cid.rnr_retry, 7), "sq_psn": self._psn_of(cid),
                 "max_rd_atomic": min(max(cid.initiator_depth, 1), lim.max_qp_init_rd_atom)})

    def _qp_error(self, cid: CMId, now: float):
        """The connection ends: its QP goes to ERR, flushing what is outstanding."""
        qp = cid.qp
        if qp is not None and self.device.qps.get(qp.qp_num) is qp and \
                qp.state not in (QPState.IBV_QPS_RESET, QPState.IBV_QPS_ERR):
            qp.transition(QPState.IBV_QPS_ERR, "CM disconnect", now)

    def _conn_info(self, cid: CMId) -> dict:
        return dict(local_ip=cid.local_ip, local_port=cid.local_port, remote_ip=cid.remote_ip,
                    remote_port=cid.remote_port, remote_qpn=cid.remote_qpn)

    def _event(self, cid: CMId, kind: E, **fields):
        if cid.owner is not None:
            ev = {"cm_event": int(kind), "id": cid.handle}
            ev.update(fields)
            self.device.post_event(cid.route or cid.owner, ev)

    def _lookup(self, local_comm_id: int, src: str) -> CMId | None:
        cid = self.by_comm_id.get(local_comm_id)
        if cid is None or cid.remote_ip != src:
            return None
        return cid

    def _timewait(self, cid: CMId, now: float):
        cid.state = St.TIMEWAIT
        cid.last_mad = None
        self._arm(cid, now + TIMEWAIT)

    def _close(self, cid: CMId):
        """Forget the connection; only the consumer's handle remains (until destroy_id)."""
        cid.state = St.CLOSED
        self._disarm(cid)
        if self.by_comm_id.get(cid.local_comm_id) is cid:
            del self.by_comm_id[cid.local_comm_id]
        if self.by_remote.get((cid.remote_ip, cid.remote_comm_id)) is cid:
            del self.by_remote[(cid.remote_ip, cid.remote_comm_id)]
        if cid.listener is not None:
            cid.listener.children.discard(cid)

    def _arm(self, cid: CMId, at: float):
        cid.deadline = at
        self.timed.add(cid)

    def _disarm(self, cid: CMId):
        cid.deadline = None
        self.timed.discard(cid)

    def _send(self, cid: CMId, msg, now: float, timed: bool = False):
        data = mad.pack(msg, self._tid())
        cid.last_mad = data
        self._emit(cid.remote_ip, data)
        if timed:
            cid.retries_left = MAX_CM_RETRIES
            self._arm(cid, now + cm_timeout(CM_RESPONSE_TIMEOUT))

    def _send_rej(self, cid: CMId, reason: int, now: float, private_data: bytes = b""):
        msg = {St.REQ_RCVD: mad.MsgRef.REQ, St.REQ_SENT: mad.MsgRef.REP}.get(
            cid.state, mad.MsgRef.OTHER)
        self._emit_msg(cid.remote_ip, mad.CmRej(
            local_comm_id=cid.local_comm_id, remote_comm_id=cid.remote_comm_id, reason=reason,
            message_rejected=msg, private_data=private_data), self._tid())
        self._disarm(cid)

    def _emit_msg(self, ip: str, msg, tid: int):
        self._emit(ip, mad.pack(msg, tid))

    def _emit(self, ip: str, data: bytes):
        """One MAD as a UD SEND from QP1 to the peer's QP1 (IBTA 13.5.1, Annex A17)."""
        self._psn = (self._psn + 1) & 0xFFFFFF
        pkt = roce.Packet(opcode=_UD_SEND, dest_qp=mad.GSI_QPN, psn=self._psn,
                          deth_qkey=mad.GSI_QKEY, deth_src_qp=mad.GSI_QPN)
        self.counters.inc("cm_tx_mads")
        self.device.emit_to(ip, self.device.native.ipv4_be(ip), pkt, data)

    def _tid(self) -> int:
        return self.rng.getrandbits(64)

    def _new_comm_id(self, cid: CMId) -> int:
        while True:
            comm = self.rng.getrandbits(32)
            if comm and comm not in self.by_comm_id:
                self.by_comm_id[comm] = cid
                return comm

    def _psn_of(self, cid: CMId) -> int:
        """The id's starting PSN: chosen once, at its first use (rdma_cm's seq_num)."""
        if not cid.local_psn:
            cid.local_psn = self.rng.getrandbits(24) or 1
        return cid.local_psn

    def _free_port(self) -> int:
        lo, hi = EPHEMERAL
        used = {port for _ps, port in self.listeners}
        for _ in range(hi - lo):
            p = self.rng.randint(lo, hi)
            if p not in used:
                return p
        raise VerbsError(98, "no free rdma_cm port (EADDRINUSE)")

"""Service ID Resolution (IBTA 12.11): how rdma_cm "connects" a UD QP (RDMA_PS_UDP and
RDMA_PS_IPOIB ids). The active side sends a SIDR_REQ naming the Service ID; the passive
side's consumer accepts (SIDR_REP, status 0, with the QPN and Q_Key of its UD QP) or
rejects (SIDR_REP, status 2). There is no connection afterwards: the active side gets
ESTABLISHED with the remote QPN, Q_Key and an address handle for it, the passive side gets
no event, and neither side has anything to disconnect.

A mixin of CMAgent (core/cm/agent.py), whose helpers it uses; sans-I/O like the rest.
"""
from __future__ import annotations

from rnicd.core.cm.conn import CMId, CMState
from rnicd.errors import VerbsError, einval
from rnicd.wire import cma, mad, roce
from rnicd.wire.abi import QPAttrMask, QPState
from rnicd.wire.cma import CMEventType as E

St = CMState
M = QPAttrMask
DUP_WINDOW = 1.0       # s the passive side answers a duplicate SIDR_REQ with its SIDR_REP
HOP_LIMIT = 64         # the AH's hop limit: what an IP route gives RoCEv2 (cma_iboe)
_EINVAL = 22
_ETIMEDOUT = 110


class SidrMixin:
    # ---- consumer verbs ------------------------------------------------------------------
    def _sidr_connect(self, cid: CMId, qp, dst_ip: str, port: int, private_data: bytes,
                      now: float):
        """rdma_connect on a UD id (rdma_cm's cma_resolve_ib_udp): a SIDR_REQ (12.11.1)."""
        if len(private_data) > cma.SIDR_REQ_PRIVATE_DATA:
            raise einval(f"connect: private data is {len(private_data)} bytes; a SIDR_REQ "
                         f"carries at most {cma.SIDR_REQ_PRIVATE_DATA} after the rdma_cm "
                         "header")
        if qp is not None:
            cid.qp, qp.cm_id = qp, cid
        cid.local_ip, cid.remote_ip = self.device.ip, dst_ip
        cid.local_port, cid.remote_port = self._free_port(), port
        cid.local_comm_id = self._new_comm_id(cid)          # the SIDR Request ID
        pdata = cma.req_private_data(self.device.ip, cid.local_port, dst_ip, private_data,
                                     room=cma.SIDR_REQ_PRIVATE_DATA)
        cid.req = mad.CmSidrReq(request_id=cid.local_comm_id,
                                service_id=cma.service_id(port, cid.ps), private_data=pdata)
        cid.state = St.REQ_SENT
        self._send(cid, cid.req, now, timed=True)

    def _sidr_accept(self, cid: CMId, qp, param: dict, private_data: bytes, now: float):
        """rdma_accept of a SIDR request: SIDR_REP status 0 with our UD QP's number and the
        id's Q_Key (12.11.2). The QP is the id's, or conn_param.qp_num's (an external one)."""
        if qp is None and not param["qp_num"]:
            raise einval("accept: this UD id has no QP; create_qp first, or name the UD QP "
                         "that answers in conn_param.qp_num")
        if len(private_data) > mad.private_data_len(mad.CmSidrRep):
            raise einval(f"accept: private data is {len(private_data)} bytes; a SIDR_REP "
                         f"carries at most {mad.private_data_len(mad.CmSidrRep)}")
        if qp is not None:
            cid.qp, qp.cm_id = qp, cid
        else:
            cid.qp_num = param["qp_num"]
        self._send_sidr_rep(cid, mad.SidrStatus.VALID_QPN, private_data)
        cid.state = St.ESTABLISHED
        self.counters.inc("cm_sidr_accepted")
        self._arm(cid, now + DUP_WINDOW)        # then forget the request (duplicates)

    def _sidr_reject(self, cid: CMId, private_data: bytes,
                     status: int = mad.SidrStatus.REJECTED):
        if len(private_data) > mad.private_data_len(mad.CmSidrRep):
            raise einval(f"reject: private data is {len(private_data)} bytes; a SIDR_REP "
                         f"carries at most {mad.private_data_len(mad.CmSidrRep)}")
        self._send_sidr_rep(cid, status, private_data)
        self._close(cid)

    def _send_sidr_rep(self, cid: CMId, status: int, private_data: bytes = b""):
        ok = status == mad.SidrStatus.VALID_QPN
        rep = mad.CmSidrRep(request_id=cid.remote_comm_id, status=status,
                            service_id=cid.req.service_id, qpn=cid.local_qpn if ok else 0,
                            qkey=cid.qkey if ok else 0, private_data=private_data)
        data = mad.pack(rep, cid.tid)            # the response carries the request's TID
        cid.last_mad = data
        self._emit(cid.remote_ip, data)

    # ---- received MADs -------------------------------------------------------------------
    def _on_sidr_req(self, req: mad.CmSidrReq, src: str, now: float):
        dup = self.by_remote.get((src, req.request_id))
        if dup is not None:                       # our SIDR_REP was lost, or is coming
            self.counters.inc("cm_rx_dup_sidr_req")
            if dup.state == St.ESTABLISHED and dup.last_mad:
                self._emit(src, dup.last_mad)
            return
        split = cma.split_service_id(req.service_id)
        listener = self.listeners.get(split) if split is not None else None
        tid = self._rx_tid
        if listener is None or not listener.ud:
            # 12.11.2: no service on this ServiceID (rdma_cm: IB_SIDR_UNSUPPORTED)
            self.counters.inc("cm_tx_sidr_sid_not_supported")
            return self._emit_msg(src, mad.CmSidrRep(
                request_id=req.request_id, status=mad.SidrStatus.SID_NOT_SUPPORTED,
                service_id=req.service_id), tid)
        if self._pending(listener) >= listener.backlog:
            self.counters.inc("cm_tx_sidr_rejected")
            return self._emit_msg(src, mad.CmSidrRep(
                request_id=req.request_id, status=mad.SidrStatus.REJECTED,
                service_id=req.service_id, private_data=b"rnicd: listen backlog full"), tid)
        cid = CMId(listener.owner, listener.owner.new_handle(), listener.ps)
        listener.owner.cm_ids[cid.handle] = cid
        cid.listener, cid.route = listener, listener.route   # the listener's channel
        listener.children.add(cid)
        parsed = cma.parse_req_private_data(req.private_data)
        src_port, user = (parsed[1], parsed[3]) if parsed else (0, bytes(req.private_data))
        cid.req, cid.state, cid.tid = req, St.REQ_RCVD, tid
        cid.local_ip, cid.local_port = self.device.ip, listener.local_port
        cid.remote_ip, cid.remote_port = src, src_port
        cid.remote_comm_id = req.request_id
        self.by_remote[(src, req.request_id)] = cid
        cid.private_data = user
        self._event(cid, E.RDMA_CM_EVENT_CONNECT_REQUEST, listen_id=listener.handle,
                    private_data=user, **self._conn_info(cid))

    def _on_sidr_rep(self, rep: mad.CmSidrRep, src: str, now: float):
        cid = self._lookup(rep.request_id, src)
        if cid is None or not cid.ud or cid.state != St.REQ_SENT:
            return self.counters.inc("cm_rx_drop_stale")
        pdata = bytes(rep.private_data)
        if rep.status != mad.SidrStatus.VALID_QPN:
            # rdma_cm: UNREACHABLE with the SIDR status (2: the consumer rejected)
            self.counters.inc("cm_rx_sidr_status_" + (
                mad.SidrStatus(rep.status).name.lower()
                if rep.status in mad.SidrStatus._value2member_map_ else "unknown"))
            self._event(cid, E.RDMA_CM_EVENT_UNREACHABLE, status=rep.status,
                        private_data=pdata, **self._conn_info(cid))
            return self._close(cid)
        if rep.qkey != cid.qkey:
            # rdma_cm's cma_set_qkey: a UDP id's Q_Key is RDMA_UDP_QKEY; another one fails
            self.counters.inc("cm_rx_sidr_bad_qkey")
            self._event(cid, E.RDMA_CM_EVENT_ADDR_ERROR, status=-_EINVAL,
                        **self._conn_info(cid))
            return self._close(cid)
        cid.remote_qpn = rep.qpn
        cid.state = St.ESTABLISHED
        self._disarm(cid)
        self.counters.inc("cm_sidr_resolved")
        ah = {"is_global": 1, "port_num": 1, "sl": 0, "dlid": 0, "src_path_bits": 0,
              "static_rate": 0, "grh": {"dgid": roce.ipv4_mapped_gid(src), "sgid_index": 0,
                                        "hop_limit": HOP_LIMIT, "traffic_class": cid.tos,
                                        "flow_label": 0}}
        self._event(cid, E.RDMA_CM_EVENT_ESTABLISHED, private_data=pdata,
                    ud_param={"qp_num": rep.qpn, "qkey": rep.qkey, "ah_attr": ah},
                    **self._conn_info(cid))

    # ---- timers and teardown -------------------------------------------------------------
    def _sidr_timer(self, cid: CMId, now: float) -> bool:
        """A UD id's deadline passed; True when handled here."""
        if not cid.ud:
            return False
        if cid.state == St.ESTABLISHED:           # passive: stop answering duplicates
            self._disarm(cid)
            if self.by_remote.get((cid.remote_ip, cid.remote_comm_id)) is cid:
                del self.by_remote[(cid.remote_ip, cid.remote_comm_id)]
            if cid.listener is not None:
                cid.listener.children.discard(cid)
            return True
        if cid.state == St.REQ_SENT and cid.retries_left > 0:
            return False                          # resend the SIDR_REQ as usual
        self.counters.inc("cm_timeouts")
        self._event(cid, E.RDMA_CM_EVENT_UNREACHABLE, status=-_ETIMEDOUT)
        self._close(cid)
        return True

    def _sidr_destroy(self, cid: CMId):
        if cid.state == St.REQ_RCVD:              # nobody will answer: the provider rejects
            self._send_sidr_rep(cid, mad.SidrStatus.REJECTED)
        self._close(cid)

    # ---- rdma_init_qp_attr for UD --------------------------------------------------------
    def _ud_qp_attr(self, cid: CMId, state: QPState) -> tuple[int, dict]:
        """What rdma_cm gives a UD QP (cma_ib_init_qp_attr): INIT with its P_Key index, port
        and the id's Q_Key; RTR; RTS with the id's starting PSN."""
        if state == QPState.IBV_QPS_INIT:
            return (M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY,
                    {"qp_state": state, "pkey_index": 0, "port_num": 1, "qkey": cid.qkey})
        if state == QPState.IBV_QPS_RTR:
            return M.IBV_QP_STATE, {"qp_state": state}
        if state == QPState.IBV_QPS_RTS:
            return M.IBV_QP_STATE | M.IBV_QP_SQ_PSN, {"qp_state": state,
                                                     "sq_psn": self._psn_of(cid)}
        raise VerbsError(_EINVAL, f"init_qp_attr: rdma_cm gives attributes for INIT, RTR "
                         f"and RTS, not {QPState(state).name}")

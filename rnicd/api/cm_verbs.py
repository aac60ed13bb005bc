"""Control verbs of connection management (rdma_cm over the CM agent, core/cm/agent.py):
a mixin of Session, which owns the objects they name."""
from __future__ import annotations

import errno

from rnicd.api.args import arg_bytes, arg_conn_param, arg_int, arg_ipv4
from rnicd.core.cm.conn import CMId
from rnicd.core.cm.offload import NOTIFY_DELAY, NOTIFY_MAX, Offload
from rnicd.errors import VerbsError, einval
from rnicd.wire import cma, mad
from rnicd.wire.abi import QPState, QPType


class CMVerbs:
    # ---- connection management (rdma_cm; core/cm/agent.py) ---------------------------------
    def m_cm_create_id(self, args, fds, now):
        ps = arg_int(args, "ps", 0, 0xFFFF, cma.RDMA_PS_TCP)
        if ps not in cma.PORT_SPACES:
            raise einval(f"cm_create_id: port space {ps:#x} is none of rdma_cm's "
                         f"({', '.join(cma.PORT_SPACES.values())})")
        if ps == cma.RDMA_PS_IPOIB:
            raise VerbsError(errno.EPROTONOSUPPORT, "cm_create_id: RDMA_PS_IPOIB takes its "
                             "Q_Key from an IPoIB broadcast group (an IB SA); RoCE has none: "
                             "use RDMA_PS_UDP")
        cid = CMId(self, self._handle(), ps)
        cid.route = self.caller
        self.cm_ids[cid.handle] = cid
        return {"id": cid.handle}, []

    def m_cm_migrate_id(self, args, fds, now):
        """rdma_migrate_id: the id's events go to the calling connection from now on (a
        listener's future requests too)."""
        self._get(self.cm_ids, args, "id", "CM id").route = self.caller
        return {}, []

    def drop_route(self, route, now: float):
        """One connection of a shared context closed: the CM ids whose events went there
        are destroyed, as closing an rdma_cm event channel destroys its ids."""
        ids = [c for c in self.cm_ids.values() if c.route is route]
        self.device.cm.abort_owner(self, ids, now)
        for c in ids:
            self.cm_ids.pop(c.handle, None)

    def m_cm_destroy_id(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        self.device.cm.destroy(cid, now)
        del self.cm_ids[cid.handle]
        return {}, []

    def m_cm_listen(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        port = arg_int(args, "port", 0, 0xFFFF)
        backlog = arg_int(args, "backlog", 0, 1 << 20, 0)
        offload = None
        if args.get("offload") is not None:
            offload = self._offload_template(args["offload"])
        port = self.device.cm.listen(cid, port, backlog, offload)
        return {"port": port, "ip": self.device.ip}, []

    def _cm_qp(self, args):
        """The id's QP, or None for a connection of an external QP (conn_param.qp_num)."""
        return None if args.get("qp") is None else self._get(self.qps, args, "qp", "QP")

    def m_cm_connect(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        qp = self._cm_qp(args)
        self.device.cm.connect(cid, qp, arg_ipv4(args, "dst_ip"), arg_int(args, "port", 1, 0xFFFF),
                               arg_conn_param(args), arg_bytes(args, "private_data", 1 << 10),
                               now)
        return {"local_port": cid.local_port}, []

    def m_cm_accept(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        qp = self._cm_qp(args)
        self.device.cm.accept(cid, qp, arg_conn_param(args),
                              arg_bytes(args, "private_data", 1 << 10), now)
        return {}, []

    def m_cm_reject(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        self.device.cm.reject(cid, arg_bytes(args, "private_data", 1 << 10), now)
        return {}, []

    def m_cm_disconnect(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        self.device.cm.disconnect(cid, now, arg_bytes(args, "private_data",
                                                      mad.private_data_len(mad.CmDreq)))
        return {}, []

    def m_cm_establish(self, args, fds, now):
        self.device.cm.establish(self._get(self.cm_ids, args, "id", "CM id"), now)
        return {}, []

    def m_cm_set_option(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        self.device.cm.set_option(cid, arg_int(args, "level", 0, 0xFFFF),
                                  arg_int(args, "name", 0, 0xFFFF),
                                  arg_int(args, "value", -(1 << 31), (1 << 31) - 1))
        return {}, []

    def m_cm_init_qp_attr(self, args, fds, now):
        cid = self._get(self.cm_ids, args, "id", "CM id")
        state = arg_int(args, "qp_state", 0, 6)
        mask, attr = self.device.cm.init_qp_attr(cid, QPState(state))
        return {"attr_mask": int(mask), "attr": attr}, []

    def m_open_qp(self, args, fds, now):
        """The rings of a QP the daemon created for an offloaded connection."""
        qp = self._get(self.qps, args, "qp", "QP")
        parked = self.parked_rings.pop(qp.handle, None)
        if parked is None:
            raise VerbsError(errno.EBUSY, f"open_qp: QP {qp.handle}'s rings were already "
                             "handed to this client (or it was not created by offload)")
        result, ring_fds = parked
        return dict(result, pd=qp.pd.handle, send_cq=qp.send_cq.handle,
                    recv_cq=qp.recv_cq.handle, sq_sig_all=int(qp.sq_sig_all)), ring_fds

    def _offload_template(self, t) -> Offload:
        """Check a listener's establishment-offload template (core/cm/offload.py) and
        build the functions that create and discard each connection's QP."""
        if not isinstance(t, dict):
            raise einval("'offload' must be a map: {qp_init: {...}, recv: {...}, ...}")
        qp_init = t.get("qp_init")
        if not isinstance(qp_init, dict):
            raise einval("offload needs 'qp_init': the create_qp arguments of each QP")
        qp_args = dict(qp_init, qp_type=int(QPType.IBV_QPT_RC), srq=qp_init.get("srq"))
        for name, table, what in (("pd", self.pds, "PD"), ("send_cq", self.cqs, "send CQ"),
                                  ("recv_cq", self.cqs, "receive CQ")):
            self._get(table, qp_init, name, what)
        recv = t.get("recv")
        carve = None
        if recv is not None:
            if not isinstance(recv, dict):
                raise einval("offload 'recv' must be a map {mr, offset, length, count}")
            mr = self._get(self.mrs, recv, "mr", "MR")
            offset = arg_int(recv, "offset", 0, mr.length - 1, 0)
            length = arg_int(recv, "length", 1, mr.length)
            count = arg_int(recv, "count", 1, self.device.limits.max_qp_wr)
            cap = qp_init.get("cap") if isinstance(qp_init.get("cap"), dict) else {}
            if count > arg_int(cap, "max_recv_wr", 1, self.device.limits.max_qp_wr, 1):
                raise einval("offload: recv.count exceeds qp_init.cap.max_recv_wr")
            carve = [mr, offset, length, count, 0]      # the last item: next free slot
        param = arg_conn_param(t)
        pdata = arg_bytes(t, "private_data", mad.private_data_len(mad.CmRep))
        notify_max = arg_int(t, "notify_max", 1, 1 << 16, NOTIFY_MAX)
        notify_usec = arg_int(t, "notify_usec", 0, 10_000_000, int(NOTIFY_DELAY * 1e6))

        def spawn(now: float):
            if carve is not None:
                mr, offset, length, count, slot = carve
                base = offset + slot * count * length
                if base + count * length > mr.length:
                    raise VerbsError(errno.ENOMEM, "offload: the receive template's MR is "
                                     "used up")
            qp, result, ring_fds = self._create_qp(qp_args)
            self.parked_rings[qp.handle] = (result, ring_fds)
            if carve is not None:
                carve[4] += 1
                for i in range(count):
                    addr = mr.iova + base + i * length
                    qp.rq.post(addr, [(addr, length, mr.lkey)])
            return qp

        def discard(qp):
            if qp is not None and self.qps.get(qp.handle) is qp:
                self._destroy_qp(qp, 0.0)

        return Offload(spawn, discard, param, pdata, notify_max, notify_usec / 1e6)

"""Queue pairs: ``QP(pd, init_attr, qp_attr=None)``, QPCap, QPInitAttr, QPAttr, as pyverbs.qp.

post_send and post_recv write WQEs into the QP's shared-memory rings (see rnic._post);
state changes, queries and creation are control verbs on the socket.
"""
import socket

from rnicd.wire.abi import QPAttrMask, QPState, QPType, SendFlags, WROpcode
from rnicd.wire.rings import RingKind

from . import _post
from ._conn import _close_fds
from ._qp_attr import QPAttr, QPCap, QPInitAttr, QPInitAttrEx
from ._rings import Ring, native
from ._unsupported import not_offered
from .base import RnicCM
from .device import need_int
from .errors import RnicError, einval, eopnotsupp
from .wr import SGE, SendWR, wr_chain

__all__ = ["ECE", "QP", "QPAttr", "QPCap", "QPEx", "QPInitAttr", "QPInitAttrEx"]


class ECE:
    """struct ibv_ece (Enhanced Connection Establishment): ``vendor_id``, ``options``,
    ``comp_mask``. rnicd has no ECE: QP.query_ece/set_ece answer EOPNOTSUPP."""

    def __init__(self, vendor_id=0, options=0, comp_mask=0):
        self.vendor_id, self.options, self.comp_mask = vendor_id, options, comp_mask

    def __repr__(self) -> str:
        return (f"ECE(vendor_id={self.vendor_id:#x}, options={self.options:#x}, "
                f"comp_mask={self.comp_mask:#x})")

M, S, T = QPAttrMask, QPState, QPType
# enum ibv_qp_type values of QP types rnicd does not offer (EOPNOTSUPP, not EINVAL).
QPT_NOT_OFFERED = {8: "raw packet (IBV_QPT_RAW_PACKET)", 0xFF: "driver (IBV_QPT_DRIVER)"}
XRC_INI, XRC_TGT = T.IBV_QPT_XRC_SEND, T.IBV_QPT_XRC_RECV

# The masks pyverbs' QP.to_init / to_rtr / to_rts pass for each QP type (IBV_QP_STATE added).
TRANSITION_MASKS = {
    T.IBV_QPT_RC: {
        "INIT": M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
        "RTR": M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN
        | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER,
        "RTS": M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY | M.IBV_QP_SQ_PSN
        | M.IBV_QP_MAX_QP_RD_ATOMIC,
    },
    T.IBV_QPT_UC: {
        "INIT": M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
        "RTR": M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN,
        "RTS": M.IBV_QP_SQ_PSN,
    },
    T.IBV_QPT_UD: {
        "INIT": M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY,
        "RTR": M(0),
        "RTS": M.IBV_QP_SQ_PSN,
    },
    XRC_TGT: {
        "INIT": M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
        "RTR": M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN
        | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER,
        "RTS": M.IBV_QP_TIMEOUT | M.IBV_QP_SQ_PSN,
    },
    XRC_INI: {
        "INIT": M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
        "RTR": M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN,
        "RTS": M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY | M.IBV_QP_SQ_PSN
        | M.IBV_QP_MAX_QP_RD_ATOMIC,
    },
}

# States in which WRs may be posted. In SQE/ERR the daemon completes them with a flush error.
POST_SEND_STATES = frozenset({S.IBV_QPS_RTS, S.IBV_QPS_SQD, S.IBV_QPS_SQE, S.IBV_QPS_ERR})
POST_RECV_STATES = frozenset({S.IBV_QPS_INIT, S.IBV_QPS_RTR, S.IBV_QPS_RTS, S.IBV_QPS_SQD,
                              S.IBV_QPS_SQE, S.IBV_QPS_ERR})


def _state_name(s) -> str:
    try:
        return S(s).name
    except ValueError:
        return str(s)


def _copy_wr(dst, src) -> None:
    if dst is not None and dst is not src and hasattr(dst, "__dict__"):
        dst.__dict__.update(vars(src))


class QP(RnicCM):
    """A queue pair: ``qp_num``, ``qp_type``, ``qp_state``, ``cap`` (the actual caps)."""

    _destroy_verb = "destroy_qp"
    _handle_key = "qp"

    def __init__(self, pd, init_attr: QPInitAttr, qp_attr: QPAttr = None):
        """``QP(pd, QPInitAttr)``, or as pyverbs also allows ``QP(ctx, QPInitAttrEx)`` with
        the PD in the extended attributes. XRC (Annex A14): an IBV_QPT_XRC_SEND (INI) QP
        needs pd and scq and has no receive side; an IBV_QPT_XRC_RECV (TGT) QP needs only
        QPInitAttrEx.xrcd and has no queue at all (its requests name an XRC SRQ)."""
        if not isinstance(init_attr, QPInitAttr):
            raise einval("QP(pd, init_attr): init_attr must be a QPInitAttr(Ex)")
        xrcd = None
        if isinstance(init_attr, QPInitAttrEx):
            if init_attr.pd is not None:
                pd = init_attr.pd
            what = init_attr.unoffered()
            if what is not None:
                raise not_offered(f"QPInitAttrEx.{what}")
            if init_attr.qp_type == XRC_TGT:
                xrcd = init_attr.xrcd
                if xrcd is None:
                    raise einval("Failed to create QP: an XRC TGT QP (IBV_QPT_XRC_RECV) needs "
                                 "QPInitAttrEx.xrcd")
                xrcd._check_open()
                return self._create_tgt(xrcd, init_attr, qp_attr)
        if init_attr.qp_type == XRC_TGT:
            raise einval("Failed to create QP: an XRC TGT QP is created on a context with "
                         "QPInitAttrEx(xrcd=...)")
        if not hasattr(pd, "ctx") or pd.ctx is pd:
            raise einval("QP: a PD is needed (as the creator or in QPInitAttrEx.pd)")
        pd._check_open()
        ctx = pd.ctx
        if int(init_attr.qp_type) in QPT_NOT_OFFERED:
            raise not_offered(f"{QPT_NOT_OFFERED[int(init_attr.qp_type)]} QPs")
        try:
            qp_type = T(init_attr.qp_type)
        except ValueError:
            raise einval(f"QP type {init_attr.qp_type!r} is not supported; rnicd has "
                         "IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD") from None
        scq, rcq, srq = init_attr.send_cq, init_attr.recv_cq, init_attr.srq
        if qp_type == XRC_INI:          # no receive side (A14.2.3): rcq and srq are unused
            if srq is not None:
                raise einval("Failed to create QP: an XRC INI QP (IBV_QPT_XRC_SEND) has no "
                             "receive queue; it takes no SRQ")
            rcq = None
        for obj in (scq, rcq, srq):
            if obj is not None:
                obj._check_open()
        args = {"pd": pd.handle, "qp_type": int(qp_type), "sq_sig_all": int(bool(
                init_attr.sq_sig_all)), "cap": init_attr.cap.to_dict(),
                "send_cq": None if scq is None else scq.handle,
                "recv_cq": None if rcq is None else rcq.handle,
                "srq": None if srq is None else srq.handle}
        r, fds = ctx._call("create_qp", args,
                           nfds=1 if srq is not None or qp_type == XRC_INI else 2)
        self._attach(pd, r, fds, qp_type, init_attr.qp_context, init_attr.sq_sig_all,
                     (scq, rcq, srq), init_attr.cap, "create_qp")
        if qp_attr is not None:
            (self.to_rts if qp_type == T.IBV_QPT_UD else self.to_init)(qp_attr)

    def _create_tgt(self, xrcd, init_attr, qp_attr):
        ctx = xrcd.ctx
        r, fds = ctx._call("create_qp", {"qp_type": int(XRC_TGT), "xrcd": xrcd.handle})
        self._attach(ctx, r, fds, XRC_TGT, init_attr.qp_context, 0, (None, None, None),
                     init_attr.cap, "create_qp", xrcd=xrcd)
        if qp_attr is not None:
            self.to_init(qp_attr)

    @classmethod
    def _open(cls, pd, handle: int, scq, rcq):
        """A QP the daemon created for this context (establishment offload, rnic.cmid):
        map its rings. It is in RTS already, with receives pre-posted."""
        r, fds = pd.ctx._call("open_qp", {"qp": handle}, nfds=2)
        self = cls.__new__(cls)
        self._attach(pd, r, fds, T.IBV_QPT_RC, None, bool(r.get("sq_sig_all")),
                     (scq, rcq, None), None, "open_qp")
        self._state = S.IBV_QPS_RTS
        return self

    def _attach(self, pd, r, fds, qp_type, qp_context, sq_sig_all, cqs, cap, verb,
                xrcd=None):
        """pd: the QP's PD, or (XRC TGT QP) its context."""
        ctx = pd.ctx
        if xrcd is not None:
            pd = None
        scq, rcq, srq = cqs
        self._sq = self._rq = None
        try:
            self.handle = need_int(r, "qp", verb)
        except RnicError:
            for fd in fds:
                _close_fds([fd])
            raise
        try:
            self.qp_num = need_int(r, "qp_num", verb)
            self.cap = QPCap.from_dict(r.get("cap"), default=cap)
            if qp_type != XRC_TGT:          # a TGT QP has no queue (A14.2.3)
                sq_fd = fds.pop(0)
                self._sq = Ring(sq_fd, r.get("sq_size"), RingKind.SQ, f"{verb} (SQ)",
                                place=getattr(pd, "_placement", None))
                self._sq.limit = self.cap.max_send_wr or self._sq.num_entries
            if srq is None and qp_type not in (XRC_INI, XRC_TGT):
                self._rq = Ring(fds.pop(0), r.get("rq_size"), RingKind.RQ, f"{verb} (RQ)",
                                place=getattr(pd, "_placement", None))
                self._rq.limit = self.cap.max_recv_wr or self._rq.num_entries
        except BaseException:
            for fd in fds:
                _close_fds([fd])
            self._release_local()
            ctx._destroy("destroy_qp", {"qp": self.handle})
            raise
        n = native()
        self._ffi = n.ffi
        self.qp_type = qp_type
        self.qp_context = qp_context
        self.sq_sig_all = sq_sig_all
        self._state = S.IBV_QPS_RESET
        self.context, self.pd, self.scq, self.rcq, self.srq = ctx, pd, scq, rcq, srq
        self.xrcd = xrcd
        self._init_cm(ctx)
        for parent in (ctx, pd, scq, rcq, srq, xrcd):
            if parent is not None:
                parent.add_ref(self)
        ctx._register("qp", self.handle, self)
        ctx._register("qpn", self.qp_num, self)

    # ---- state ---------------------------------------------------------------------------
    @property
    def qp_state(self) -> QPState:
        """The state after the last modify/query. The daemon may move the QP to ERR on its
        own (then IBV_EVENT_QP_FATAL & co arrive); query() refreshes this value."""
        return self._state

    def modify(self, qp_attr: QPAttr, attr_mask: int) -> None:
        """ibv_modify_qp: send the fields of ``attr_mask``."""
        self._check_open()
        attr_mask = int(attr_mask)
        r, _ = self.context._call("modify_qp", {"qp": self.handle, "attr_mask": attr_mask,
                                                "attr": qp_attr.to_dict(attr_mask)})
        if attr_mask & M.IBV_QP_STATE:
            self._state = S(qp_attr.qp_state)
            if self._state == S.IBV_QPS_RESET:      # its old completions go (libmlx5 does so)
                for cq in {id(c): c for c in (self.scq, self.rcq) if c is not None}.values():
                    if hasattr(cq, "_clean") and not cq.closed:
                        cq._clean(self.qp_num)
        if isinstance(r.get("qp_state"), int):   # rnicd reports the state it is in now
            try:
                self._state = S(r["qp_state"])
            except ValueError:
                pass

    def query_data_in_order(self, op: int, flags: int = 0) -> int:
        """ibv_query_qp_data_in_order: 1, the data of every operation is placed in order
        (rnicd places an RC/UC message's packets in PSN order, each once, and a UD message
        is one packet)."""
        if flags:
            raise einval("query_data_in_order: flags must be 0")
        self._check_open()
        return 1

    def query(self, attr_mask: int = 0):
        """ibv_query_qp: ``(QPAttr, QPInitAttr)``."""
        self._check_open()
        r, _ = self.context._call("query_qp", {"qp": self.handle, "attr_mask": int(attr_mask)})
        attr = QPAttr.from_dict(r.get("attr") if isinstance(r.get("attr"), dict) else {})
        init = r.get("init_attr") if isinstance(r.get("init_attr"), dict) else {}
        init_attr = QPInitAttr(qp_type=init.get("qp_type", self.qp_type),
                               qp_context=self.qp_context, scq=self.scq, rcq=self.rcq,
                               srq=self.srq, cap=QPCap.from_dict(init.get("cap"), self.cap),
                               sq_sig_all=init.get("sq_sig_all", self.sq_sig_all))
        if isinstance((r.get("attr") or {}).get("qp_state"), int):
            try:
                self._state = S(r["attr"]["qp_state"])
            except ValueError:
                pass
        return attr, init_attr

    def _mask(self, dst: str) -> int:
        return int(TRANSITION_MASKS[self.qp_type][dst] | M.IBV_QP_STATE)

    def to_init(self, qp_attr: QPAttr) -> None:
        """Move to INIT with the attributes pyverbs' to_init sends for this QP type."""
        qp_attr.qp_state = S.IBV_QPS_INIT
        self.modify(qp_attr, self._mask("INIT"))

    def to_rtr(self, qp_attr: QPAttr) -> None:
        """Move to RTR (through INIT if the QP is not in INIT yet)."""
        if self._state != S.IBV_QPS_INIT:
            self.to_init(qp_attr)
        qp_attr.qp_state = S.IBV_QPS_RTR
        self.modify(qp_attr, self._mask("RTR"))

    def to_rts(self, qp_attr: QPAttr) -> None:
        """Move to RTS (through INIT and RTR if the QP is not in RTR yet)."""
        if self._state != S.IBV_QPS_RTR:
            self.to_rtr(qp_attr)
        qp_attr.qp_state = S.IBV_QPS_RTS
        self.modify(qp_attr, self._mask("RTS"))

    def query_ece(self) -> ECE:
        """ibv_query_ece: EOPNOTSUPP, as on a device without ECE (man ibv_query_ece)."""
        self._check_open()
        raise not_offered("ECE (ibv_query_ece)")

    def set_ece(self, ece: ECE) -> None:
        """ibv_set_ece: EOPNOTSUPP, as on a device without ECE (man ibv_set_ece)."""
        self._check_open()
        raise not_offered("ECE (ibv_set_ece)")

    # ---- data path -----------------------------------------------------------------------
    def post_send(self, wr, bad_wr=None) -> None:
        """Post a SendWR (and its ``next_wr`` chain), or a list of them. One doorbell."""
        self._check_open()
        wrs = wr_chain(wr)
        if self._sq is None:
            exc = einval(f"post_send: QP {self.qp_num} is an XRC TGT QP: it has no send "
                         "queue (send on an XRC INI QP, IBV_QPT_XRC_SEND)")
            exc.bad_wr = wrs[0] if wrs else None
            _copy_wr(bad_wr, exc.bad_wr)
            raise exc
        if self._state not in POST_SEND_STATES and not self._sq.error():
            exc = einval(f"post_send: QP {self.qp_num} is in {_state_name(self._state)}; "
                         "move it to RTS first (e.g. qp.to_rts(attr))")
            exc.bad_wr = wrs[0] if wrs else None
            _copy_wr(bad_wr, exc.bad_wr)
            raise exc
        try:
            _post.post_send(self, wrs)
        except RnicError as exc:
            _copy_wr(bad_wr, getattr(exc, "bad_wr", None))
            raise

    def bind_mw(self, mw, mw_bind) -> None:
        """ibv_bind_mw: bind type 1 window mw as mw_bind (an MWBind) says, with a work
        request on this QP; mw.rkey becomes the new rkey (rnic.mw)."""
        self._check_open()
        from .mw import bind_mw
        bind_mw(self, mw, mw_bind)

    def post_recv(self, wr, bad_wr=None) -> None:
        """Post a RecvWR (and its ``next_wr`` chain), or a list of them."""
        self._check_open()
        wrs = wr_chain(wr)
        try:
            if self._rq is None and self.qp_type in (XRC_INI, XRC_TGT):
                raise einval(f"post_recv: QP {self.qp_num} is an XRC QP: it has no receive "
                             "queue; post to the XRC SRQ the sender names (srq.post_recv)")
            if self._rq is None:
                raise einval(f"post_recv: QP {self.qp_num} receives through an SRQ; post "
                             "to the SRQ (srq.post_recv)")
            if self._state not in POST_RECV_STATES:
                raise einval(f"post_recv: QP {self.qp_num} is in {_state_name(self._state)}; "
                             "move it to INIT first")
        except RnicError as exc:
            exc.bad_wr = wrs[0] if wrs else None
            _copy_wr(bad_wr, exc.bad_wr)
            raise
        try:
            _post.post_recv(self._rq, self.context, wrs, self.cap.max_recv_sge, "post_recv")
        except RnicError as exc:
            _copy_wr(bad_wr, getattr(exc, "bad_wr", None))
            raise

    # ---- teardown ------------------------------------------------------------------------
    def _release_local(self) -> None:
        for name in ("_sq", "_rq"):
            ring = getattr(self, name, None)
            if ring is not None:
                ring.release()
                setattr(self, name, None)

    def __repr__(self) -> str:
        if self._closed:
            return "QP(closed)"
        return (f"QP(qp_num={self.qp_num}, type={self.qp_type.name}, "
                f"state={_state_name(self._state)})")


# ---- the extended QP (ibv_qp_ex, the ibv_wr_* send API) --------------------------------------
QP_EX_WITH = {   # enum ibv_qp_create_send_ops_flags -> the WR opcode it enables
    1 << 0: WROpcode.IBV_WR_RDMA_WRITE, 1 << 1: WROpcode.IBV_WR_RDMA_WRITE_WITH_IMM,
    1 << 2: WROpcode.IBV_WR_SEND, 1 << 3: WROpcode.IBV_WR_SEND_WITH_IMM,
    1 << 4: WROpcode.IBV_WR_RDMA_READ, 1 << 5: WROpcode.IBV_WR_ATOMIC_CMP_AND_SWP,
    1 << 6: WROpcode.IBV_WR_ATOMIC_FETCH_AND_ADD, 1 << 7: WROpcode.IBV_WR_LOCAL_INV,
    1 << 8: WROpcode.IBV_WR_BIND_MW, 1 << 9: WROpcode.IBV_WR_SEND_WITH_INV,
}
QP_EX_NOT_OFFERED = {1 << 10: "TSO", 1 << 12: "ATOMIC_WRITE"}


class QPEx(QP):
    """An extended QP: ``QPEx(ctx_or_pd, QPInitAttrEx)``. WRs are built with the ibv_wr_*
    calls between wr_start() and wr_complete(), which posts them all (to the same ring as
    post_send); wr_abort() drops them. ``wr_id`` and ``wr_flags`` apply to the next WR.
    Errors surface at wr_complete, as in libibverbs."""

    def __init__(self, creator, init_attr: QPInitAttrEx, qp_attr: QPAttr = None):
        if not isinstance(init_attr, QPInitAttrEx):
            raise einval("QPEx needs a QPInitAttrEx")
        ops = init_attr.send_ops_flags
        for bit, name in QP_EX_NOT_OFFERED.items():
            if ops & bit:
                raise not_offered(f"QPEx send op IBV_QP_EX_WITH_{name}")
        unknown = ops & ~sum(QP_EX_WITH) & ~sum(QP_EX_NOT_OFFERED)
        if unknown:
            raise einval(f"QPEx: unknown send_ops_flags bits {unknown:#x}")
        # as rxe: a send op the QP type's transport does not carry is EOPNOTSUPP (UC: no
        # READ or atomics, IBTA 9.8; UD: SENDs only)
        carried = _post.OPS_BY_QP_TYPE.get(init_attr.qp_type, ())
        for bit, opcode in QP_EX_WITH.items():
            if ops & bit and carried and opcode not in carried:
                raise eopnotsupp(f"QPEx: send op IBV_QP_EX_WITH_"
                                f"{opcode.name.removeprefix('IBV_WR_')} is not supported on "
                                f"a {T(init_attr.qp_type).name} QP")
        super().__init__(creator, init_attr, qp_attr)
        self.send_ops_flags = ops
        self.comp_mask = init_attr.comp_mask
        self.ind_table = None   # RSS indirection tables are not offered
        self.wr_id = 0
        self.wr_flags = 0
        self._wrs = None
        self._err = None

    def wr_start(self) -> None:
        self._wrs, self._err = [], None

    def _new(self, opcode, **kw) -> None:
        if self._wrs is None:
            raise einval("QPEx: call wr_start() before building work requests")
        if not any(op == opcode for op in QP_EX_WITH.values()) or \
                not any(self.send_ops_flags & b for b, op in QP_EX_WITH.items() if op == opcode):
            self._err = self._err or einval(f"QPEx: {WROpcode(opcode).name} is not in the "
                                            "QP's send_ops_flags")
        wr = SendWR(wr_id=self.wr_id, opcode=opcode, send_flags=self.wr_flags)
        for k, v in kw.items():
            setattr(wr, k, v)
        self._wrs.append(wr)

    def _cur(self) -> SendWR:
        if not self._wrs:
            raise einval("QPEx: no work request to complete (call wr_send & co first)")
        return self._wrs[-1]

    def wr_send(self) -> None:
        self._new(WROpcode.IBV_WR_SEND)

    # ibv_wr_*_imm take the immediate as __be32; pyverbs' QPEx takes a host-order number
    # and converts it (the old API's SendWR.imm_data is the __be32 value itself)
    def wr_send_imm(self, imm_data) -> None:
        self._new(WROpcode.IBV_WR_SEND_WITH_IMM, imm_data=socket.htonl(imm_data))

    def wr_rdma_write(self, rkey, remote_addr) -> None:
        self._new(WROpcode.IBV_WR_RDMA_WRITE, rkey=rkey, remote_addr=remote_addr)

    def wr_rdma_write_imm(self, rkey, remote_addr, imm_data) -> None:
        self._new(WROpcode.IBV_WR_RDMA_WRITE_WITH_IMM, rkey=rkey, remote_addr=remote_addr,
                  imm_data=socket.htonl(imm_data))

    def wr_rdma_read(self, rkey, remote_addr) -> None:
        self._new(WROpcode.IBV_WR_RDMA_READ, rkey=rkey, remote_addr=remote_addr)

    def wr_atomic_cmp_swp(self, rkey, remote_addr, compare, swap) -> None:
        self._new(WROpcode.IBV_WR_ATOMIC_CMP_AND_SWP, rkey=rkey, remote_addr=remote_addr,
                  compare_add=compare, swap=swap)

    def wr_atomic_fetch_add(self, rkey, remote_addr, add) -> None:
        self._new(WROpcode.IBV_WR_ATOMIC_FETCH_AND_ADD, rkey=rkey, remote_addr=remote_addr,
                  compare_add=add)

    def _not_offered(self, what: str) -> None:
        self._err = self._err or not_offered(f"QPEx {what}")

    def wr_local_inv(self, invalidate_rkey) -> None:
        self._new(WROpcode.IBV_WR_LOCAL_INV, imm_data=invalidate_rkey)

    def wr_bind_mw(self, mw, rkey, bind_info) -> None:
        """ibv_wr_bind_mw: bind mw (rkey: its new rkey, ibv_inc_rkey of the current one)."""
        self._new(WROpcode.IBV_WR_BIND_MW, bind_mw=mw, bind_info=bind_info, rkey=rkey)

    def wr_send_inv(self, invalidate_rkey) -> None:
        self._new(WROpcode.IBV_WR_SEND_WITH_INV, imm_data=invalidate_rkey)

    def wr_send_tso(self, hdr, hdr_sz, mss) -> None:
        self._not_offered("wr_send_tso")

    def wr_atomic_write(self, rkey, remote_addr, atomic_wr) -> None:
        self._not_offered("wr_atomic_write")

    def wr_set_sge(self, sge: SGE) -> None:
        self._cur().sg = [sge]

    def wr_set_sge_list(self, sg_list) -> None:
        self._cur().sg = list(sg_list)

    def wr_set_inline_data(self, addr, length) -> None:
        wr = self._cur()
        wr.sg = [SGE(addr, length, 0)]
        wr.send_flags |= SendFlags.IBV_SEND_INLINE

    def wr_set_inline_data_list(self, num_buf, buf_list) -> None:
        wr = self._cur()
        wr.sg = [SGE(b.addr, b.length, 0) for b in buf_list[:num_buf]]
        wr.send_flags |= SendFlags.IBV_SEND_INLINE

    def wr_set_ud_addr(self, ah, remote_qpn, remote_qkey) -> None:
        self._cur().set_wr_ud(ah, remote_qpn, remote_qkey)

    def wr_set_xrc_srqn(self, remote_srqn) -> None:
        """The XRC SRQ of the responder that serves this WR (ibv_wr_set_xrc_srqn)."""
        self._cur().set_qp_type_xrc(remote_srqn)

    def wr_abort(self) -> None:
        self._wrs, self._err = None, None

    def wr_complete(self) -> None:
        wrs, err = self._wrs, self._err
        self._wrs, self._err = None, None
        if wrs is None:
            raise einval("QPEx: wr_complete without wr_start")
        if err is not None:
            raise err
        if wrs:
            for a, b in zip(wrs, wrs[1:], strict=False):
                a.next_wr = b
            self.post_send(wrs[0])

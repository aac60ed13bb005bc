"""QP attribute objects: QPCap, QPInitAttr, QPAttr (ibv_qp_cap / ibv_qp_init_attr /
ibv_qp_attr), with pyverbs' names and defaults. Re-exported by rnic.qp."""
from rnicd.wire.abi import MTU, MigState, QPAttrMask, QPState, QPType

from .addr import AHAttr

_CAP_FIELDS = ("max_send_wr", "max_recv_wr", "max_send_sge", "max_recv_sge", "max_inline_data")


class QPCap:
    """struct ibv_qp_cap: queue depths, SGE counts and the inline data size."""

    def __init__(self, max_send_wr=1, max_recv_wr=10, max_send_sge=1, max_recv_sge=1,
                 max_inline_data=0):
        self.max_send_wr = max_send_wr
        self.max_recv_wr = max_recv_wr
        self.max_send_sge = max_send_sge
        self.max_recv_sge = max_recv_sge
        self.max_inline_data = max_inline_data

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _CAP_FIELDS}

    @classmethod
    def from_dict(cls, d, default=None) -> "QPCap":
        base = default.to_dict() if default is not None else cls().to_dict()
        if isinstance(d, dict):
            base.update({k: d[k] for k in _CAP_FIELDS
                         if isinstance(d.get(k), int) and not isinstance(d.get(k), bool)})
        return cls(**base)

    def __repr__(self) -> str:
        return "QPCap(" + ", ".join(f"{k}={getattr(self, k)}" for k in _CAP_FIELDS) + ")"


class QPInitAttr:
    """struct ibv_qp_init_attr. As in pyverbs, ``sq_sig_all`` defaults to 1."""

    def __init__(self, qp_type=QPType.IBV_QPT_UD, qp_context=None, scq=None, rcq=None,
                 srq=None, cap=None, sq_sig_all=1):
        self.qp_type = qp_type
        self.qp_context = qp_context
        self.scq = scq
        self.rcq = rcq
        self.srq = srq
        self.cap = cap if cap is not None else QPCap()
        self.sq_sig_all = sq_sig_all

    send_cq = property(lambda self: self.scq, lambda self, v: setattr(self, "scq", v))
    recv_cq = property(lambda self: self.rcq, lambda self, v: setattr(self, "rcq", v))

    def __getattr__(self, name):
        if name in _CAP_FIELDS:   # pyverbs also exposes the caps on the init attr
            return getattr(self.cap, name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in _CAP_FIELDS:   # ... for writing too: init_attr.max_send_wr = n
            setattr(self.cap, name, value)
        else:
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        try:
            t = QPType(self.qp_type).name
        except ValueError:
            t = str(self.qp_type)
        return f"QPInitAttr(qp_type={t}, sq_sig_all={self.sq_sig_all}, cap={self.cap!r})"


class QPInitAttrEx(QPInitAttr):
    """struct ibv_qp_init_attr_ex (pyverbs' argument order); xrcd for an XRC TGT QP. rnicd
    offers none of create_flags, max_tso_header, source_qpn, hash_conf and ind_table:
    creating a QP with them answers EOPNOTSUPP. ``send_ops_flags`` (IBV_QP_EX_WITH_*) is
    for QPEx."""

    def __init__(self, qp_type=QPType.IBV_QPT_UD, qp_context=None, scq=None, rcq=None,
                 srq=None, cap=None, sq_sig_all=0, comp_mask=0, pd=None, xrcd=None,
                 create_flags=0, max_tso_header=0, source_qpn=0, hash_conf=None,
                 ind_table=None, send_ops_flags=0):
        super().__init__(qp_type, qp_context, scq, rcq, srq, cap, sq_sig_all)
        self.comp_mask = comp_mask
        self.pd = pd
        self.xrcd = xrcd
        self.create_flags = create_flags
        self.max_tso_header = max_tso_header
        self.source_qpn = source_qpn
        self.hash_conf = hash_conf
        self.ind_table = ind_table
        self.send_ops_flags = send_ops_flags

    def unoffered(self) -> str | None:
        """The first requested feature rnicd does not offer, or None."""
        for name in ("hash_conf", "ind_table"):
            if getattr(self, name) is not None:
                return name
        for name in ("create_flags", "max_tso_header", "source_qpn"):
            if getattr(self, name):
                return name
        return None

    def __repr__(self) -> str:
        return (f"QPInitAttrEx(qp_type={self.qp_type}, comp_mask={self.comp_mask:#x}, "
                f"send_ops_flags={self.send_ops_flags:#x}, cap={self.cap!r})")


# ibv_qp_attr field of each attr_mask bit (as rnicd.core.qp_state.ATTR_FIELD).
MASK_FIELDS = {
    QPAttrMask.IBV_QP_STATE: ("qp_state",), QPAttrMask.IBV_QP_CUR_STATE: ("cur_qp_state",),
    QPAttrMask.IBV_QP_EN_SQD_ASYNC_NOTIFY: ("en_sqd_async_notify",),
    QPAttrMask.IBV_QP_ACCESS_FLAGS: ("qp_access_flags",),
    QPAttrMask.IBV_QP_PKEY_INDEX: ("pkey_index",), QPAttrMask.IBV_QP_PORT: ("port_num",),
    QPAttrMask.IBV_QP_QKEY: ("qkey",), QPAttrMask.IBV_QP_AV: ("ah_attr",),
    QPAttrMask.IBV_QP_PATH_MTU: ("path_mtu",), QPAttrMask.IBV_QP_TIMEOUT: ("timeout",),
    QPAttrMask.IBV_QP_RETRY_CNT: ("retry_cnt",), QPAttrMask.IBV_QP_RNR_RETRY: ("rnr_retry",),
    QPAttrMask.IBV_QP_RQ_PSN: ("rq_psn",), QPAttrMask.IBV_QP_MAX_QP_RD_ATOMIC: ("max_rd_atomic",),
    QPAttrMask.IBV_QP_ALT_PATH: ("alt_ah_attr", "alt_pkey_index", "alt_port_num",
                                 "alt_timeout"),
    QPAttrMask.IBV_QP_MIN_RNR_TIMER: ("min_rnr_timer",), QPAttrMask.IBV_QP_SQ_PSN: ("sq_psn",),
    QPAttrMask.IBV_QP_MAX_DEST_RD_ATOMIC: ("max_dest_rd_atomic",),
    QPAttrMask.IBV_QP_PATH_MIG_STATE: ("path_mig_state",), QPAttrMask.IBV_QP_CAP: ("cap",),
    QPAttrMask.IBV_QP_DEST_QPN: ("dest_qp_num",), QPAttrMask.IBV_QP_RATE_LIMIT: ("rate_limit",),
}

# Defaults: pyverbs sets qp_state, cur_qp_state, port_num and path_mtu; the rest are the
# values rdma-core's examples and perftest use, so that to_rtr/to_rts work out of the box.
_DEFAULTS = {
    "path_mig_state": MigState.IBV_MIG_MIGRATED, "qkey": 0, "rq_psn": 0, "sq_psn": 0,
    "dest_qp_num": 0, "qp_access_flags": 0, "pkey_index": 0, "alt_pkey_index": 0,
    "en_sqd_async_notify": 0, "sq_draining": 0, "max_rd_atomic": 1, "max_dest_rd_atomic": 1,
    "min_rnr_timer": 12, "timeout": 14, "retry_cnt": 7, "rnr_retry": 7, "alt_port_num": 0,
    "alt_timeout": 0, "rate_limit": 0,
}


class QPAttr:
    """struct ibv_qp_attr; every field is an attribute. Only the fields selected by an
    attr_mask are sent by QP.modify."""

    def __init__(self, qp_state=QPState.IBV_QPS_INIT, cur_qp_state=QPState.IBV_QPS_RESET,
                 port_num=1, path_mtu=MTU.IBV_MTU_1024, **fields):
        self.qp_state = qp_state
        self.cur_qp_state = cur_qp_state
        self.port_num = port_num
        self.path_mtu = path_mtu
        for k, v in _DEFAULTS.items():
            setattr(self, k, v)
        self.cap = QPCap()
        self.ah_attr = AHAttr()
        self.alt_ah_attr = AHAttr()
        for k, v in fields.items():
            if k not in _DEFAULTS and k not in ("cap", "ah_attr", "alt_ah_attr"):
                raise TypeError(f"QPAttr has no field {k!r}")
            setattr(self, k, v)

    def to_dict(self, attr_mask: int) -> dict:
        """The fields of ``attr_mask`` in the control-protocol shape (modify_qp attr)."""
        out = {}
        for bit, names in MASK_FIELDS.items():
            if attr_mask & bit:
                for name in names:
                    v = getattr(self, name)
                    out[name] = v.to_dict() if hasattr(v, "to_dict") else _plain(v)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "QPAttr":
        attr = cls()
        for k, v in (d or {}).items():
            if k in ("ah_attr", "alt_ah_attr") and isinstance(v, dict):
                setattr(attr, k, AHAttr.from_dict(v))
            elif k == "cap":
                attr.cap = QPCap.from_dict(v)
            elif k in _DEFAULTS or k in ("qp_state", "cur_qp_state", "port_num", "path_mtu"):
                setattr(attr, k, v)
        return attr

    def __repr__(self) -> str:
        try:
            st = QPState(self.qp_state).name
        except ValueError:
            st = str(self.qp_state)
        return (f"QPAttr(qp_state={st}, path_mtu={self.path_mtu}, dest_qp_num="
                f"{self.dest_qp_num}, rq_psn={self.rq_psn}, sq_psn={self.sq_psn}, "
                f"qkey={self.qkey:#x}, ah_attr={self.ah_attr!r})")


def _plain(v):
    """IntEnum/IntFlag -> int, so that msgpack sends a plain integer."""
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else v

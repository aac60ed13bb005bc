"""QP state machine and modify_qp attribute validation (sans-I/O).

States and transitions: IBTA vol 1 §10.3.1 (QP state diagram) and §11.2.5.2 (Modify QP).
The required/optional attribute masks per transition and QP type are those of Linux's
``qp_state_table`` (drivers/infiniband/core/verbs.c), which ``ib_modify_qp_is_ok()`` enforces
for rxe, mlx4 and mlx5, so applications see the same accept/reject behaviour here.

Conventions, as in the kernel:
- IBV_QP_STATE is never listed in ``required``: it is what selects the transition. A mask
  without it is a same-state modify (cur -> cur), which only exists where the table has it
  (RESET->RESET, INIT->INIT, RTS->RTS, SQD->SQD, ERR->ERR).
- IBV_QP_CUR_STATE is optional only on the transitions into RTS (from RTR, RTS, SQD, SQE).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rnicd.errors import einval
from rnicd.wire.abi import MTU, RC_ACCESS, Access, QPAttrMask, QPState, QPType

M, S, T = QPAttrMask, QPState, QPType
RC, UC, UD = T.IBV_QPT_RC, T.IBV_QPT_UC, T.IBV_QPT_UD
RESET, INIT, RTR, RTS = S.IBV_QPS_RESET, S.IBV_QPS_INIT, S.IBV_QPS_RTR, S.IBV_QPS_RTS
SQD, SQE, ERR = S.IBV_QPS_SQD, S.IBV_QPS_SQE, S.IBV_QPS_ERR

PSN_MAX = (1 << 24) - 1          # IBTA 9.2: PSN is 24 bits
QPN_MAX = (1 << 24) - 1          # IBTA 9.2: DestQP is 24 bits
QKEY_MAX = (1 << 32) - 1         # IBTA 9.2.7: Q_Key is 32 bits
QP_ACCESS_ALLOWED = int(RC_ACCESS)


@dataclass(frozen=True)
class QPLimits:
    """Device limits that bound modify_qp values (ibv_device_attr / ibv_port_attr names)."""
    max_qp_rd_atom: int = 16        # responder resources per QP -> bounds max_dest_rd_atomic
    max_qp_init_rd_atom: int = 16   # initiator depth per QP -> bounds max_rd_atomic
    port_count: int = 1
    pkey_tbl_len: int = 1
    gid_tbl_len: int = 16
    max_mtu: int = MTU.IBV_MTU_4096


DEFAULT_LIMITS = QPLimits()

# --- transition table ---------------------------------------------------------------------
# (cur, new) -> {qp_type: (required, optional)}; a QP type missing from an entry cannot take
# that transition. Tuples keep the kernel's listing order, which the error messages use.
Masks = tuple[tuple[M, ...], tuple[M, ...]]
_NONE: Masks = ((), ())
_ALL_NONE: dict[T, Masks] = {RC: _NONE, UC: _NONE, UD: _NONE}

_RCUC_INIT = (M.IBV_QP_PKEY_INDEX, M.IBV_QP_PORT, M.IBV_QP_ACCESS_FLAGS)
_UD_INIT = (M.IBV_QP_PKEY_INDEX, M.IBV_QP_PORT, M.IBV_QP_QKEY)
_UC_RTR = (M.IBV_QP_AV, M.IBV_QP_PATH_MTU, M.IBV_QP_DEST_QPN, M.IBV_QP_RQ_PSN)
_RC_RTR = _UC_RTR + (M.IBV_QP_MAX_DEST_RD_ATOMIC, M.IBV_QP_MIN_RNR_TIMER)
_RCUC_RTR_OPT = (M.IBV_QP_ALT_PATH, M.IBV_QP_ACCESS_FLAGS, M.IBV_QP_PKEY_INDEX)
_RC_RTS = (M.IBV_QP_TIMEOUT, M.IBV_QP_RETRY_CNT, M.IBV_QP_RNR_RETRY, M.IBV_QP_SQ_PSN,
           M.IBV_QP_MAX_QP_RD_ATOMIC)
_UD_TO_RTS = (M.IBV_QP_CUR_STATE, M.IBV_QP_QKEY)
_UC_TO_RTS = (M.IBV_QP_CUR_STATE, M.IBV_QP_ALT_PATH, M.IBV_QP_ACCESS_FLAGS,
              M.IBV_QP_PATH_MIG_STATE)
_RC_TO_RTS = (M.IBV_QP_CUR_STATE, M.IBV_QP_ALT_PATH, M.IBV_QP_ACCESS_FLAGS,
              M.IBV_QP_MIN_RNR_TIMER, M.IBV_QP_PATH_MIG_STATE)
_RC_SQD = (M.IBV_QP_PORT, M.IBV_QP_AV, M.IBV_QP_TIMEOUT, M.IBV_QP_RETRY_CNT, M.IBV_QP_RNR_RETRY,
           M.IBV_QP_MAX_QP_RD_ATOMIC, M.IBV_QP_MAX_DEST_RD_ATOMIC, M.IBV_QP_ALT_PATH,
           M.IBV_QP_ACCESS_FLAGS, M.IBV_QP_PKEY_INDEX, M.IBV_QP_MIN_RNR_TIMER,
           M.IBV_QP_PATH_MIG_STATE)
_UC_SQD = (M.IBV_QP_AV, M.IBV_QP_ALT_PATH, M.IBV_QP_ACCESS_FLAGS, M.IBV_QP_PKEY_INDEX,
           M.IBV_QP_PATH_MIG_STATE)
_TO_RTS_OPT = {RC: ((), _RC_TO_RTS), UC: ((), _UC_TO_RTS), UD: ((), _UD_TO_RTS)}

TRANSITIONS: dict[tuple[S, S], dict[T, Masks]] = {
    (RESET, RESET): _ALL_NONE,
    (RESET, INIT): {RC: (_RCUC_INIT, ()), UC: (_RCUC_INIT, ()), UD: (_UD_INIT, ())},
    (INIT, INIT): {RC: ((), _RCUC_INIT), UC: ((), _RCUC_INIT), UD: ((), _UD_INIT)},
    (INIT, RTR): {RC: (_RC_RTR, _RCUC_RTR_OPT), UC: (_UC_RTR, _RCUC_RTR_OPT),
                  UD: ((), (M.IBV_QP_PKEY_INDEX, M.IBV_QP_QKEY))},
    (RTR, RTS): {RC: (_RC_RTS, _RC_TO_RTS), UC: ((M.IBV_QP_SQ_PSN,), _UC_TO_RTS),
                 UD: ((M.IBV_QP_SQ_PSN,), _UD_TO_RTS)},
    (RTS, RTS): _TO_RTS_OPT,
    (RTS, SQD): {t: ((), (M.IBV_QP_EN_SQD_ASYNC_NOTIFY,)) for t in (RC, UC, UD)},
    (SQD, RTS): _TO_RTS_OPT,
    (SQD, SQD): {RC: ((), _RC_SQD), UC: ((), _UC_SQD),
                 UD: ((), (M.IBV_QP_PKEY_INDEX, M.IBV_QP_QKEY))},
    # Only UC/UD QPs enter SQE (IBTA 10.3.1: an RC send error takes the QP to ERR).
    (SQE, RTS): {UC: ((), (M.IBV_QP_CUR_STATE, M.IBV_QP_ACCESS_FLAGS)), UD: ((), _UD_TO_RTS)},
}
for _s in (INIT, RTR, RTS, SQD, SQE, ERR):
    TRANSITIONS[(_s, RESET)] = _ALL_NONE   # any -> RESET
    TRANSITIONS[(_s, ERR)] = _ALL_NONE     # any -> ERR (not from RESET, as in the kernel)
del _s

# XRC INI/TGT QPs (IBTA Annex A14), as the kernel's table has them: RC's requester
# attributes for the INI QP, RC's responder attributes for the TGT QP.
XINI, XTGT = T.IBV_QPT_XRC_SEND, T.IBV_QPT_XRC_RECV
_XINI_TO_RTS = (M.IBV_QP_CUR_STATE, M.IBV_QP_ALT_PATH, M.IBV_QP_ACCESS_FLAGS,
                M.IBV_QP_PATH_MIG_STATE)
_XTGT_TO_RTS = _RC_TO_RTS
_XRC = {
    (RESET, INIT): {XINI: (_RCUC_INIT, ()), XTGT: (_RCUC_INIT, ())},
    (INIT, INIT): {XINI: ((), _RCUC_INIT), XTGT: ((), _RCUC_INIT)},
    (INIT, RTR): {XINI: (_UC_RTR, _RCUC_RTR_OPT), XTGT: (_RC_RTR, _RCUC_RTR_OPT)},
    (RTR, RTS): {XINI: (_RC_RTS, _XINI_TO_RTS),
                 XTGT: ((M.IBV_QP_TIMEOUT, M.IBV_QP_SQ_PSN), _XTGT_TO_RTS)},
    (RTS, RTS): {XINI: ((), _XINI_TO_RTS), XTGT: ((), _XTGT_TO_RTS)},
    (RTS, SQD): {XINI: ((), (M.IBV_QP_EN_SQD_ASYNC_NOTIFY,)),
                 XTGT: ((), (M.IBV_QP_EN_SQD_ASYNC_NOTIFY,))},
    (SQD, RTS): {XINI: ((), _XINI_TO_RTS), XTGT: ((), _XTGT_TO_RTS)},
    (SQD, SQD): {XINI: ((), tuple(b for b in _RC_SQD if b not in (
                     M.IBV_QP_MAX_DEST_RD_ATOMIC, M.IBV_QP_MIN_RNR_TIMER))),
                 XTGT: ((), tuple(b for b in _RC_SQD if b not in (
                     M.IBV_QP_RETRY_CNT, M.IBV_QP_RNR_RETRY, M.IBV_QP_MAX_QP_RD_ATOMIC)))},
}
for _key, _per in list(TRANSITIONS.items()):     # any -> RESET/ERR: every type, none needed
    TRANSITIONS[_key] = {**_per, **_XRC.get(_key, {XINI: _NONE, XTGT: _NONE}
                                            if _per is _ALL_NONE else {})}
del _key, _per

# ibv_qp_attr field carried by each mask bit.
ATTR_FIELD: dict[M, str] = {
    M.IBV_QP_STATE: "qp_state", M.IBV_QP_CUR_STATE: "cur_qp_state",
    M.IBV_QP_EN_SQD_ASYNC_NOTIFY: "en_sqd_async_notify", M.IBV_QP_ACCESS_FLAGS: "qp_access_flags",
    M.IBV_QP_PKEY_INDEX: "pkey_index", M.IBV_QP_PORT: "port_num", M.IBV_QP_QKEY: "qkey",
    M.IBV_QP_AV: "ah_attr", M.IBV_QP_PATH_MTU: "path_mtu", M.IBV_QP_TIMEOUT: "timeout",
    M.IBV_QP_RETRY_CNT: "retry_cnt", M.IBV_QP_RNR_RETRY: "rnr_retry", M.IBV_QP_RQ_PSN: "rq_psn",
    M.IBV_QP_MAX_QP_RD_ATOMIC: "max_rd_atomic", M.IBV_QP_ALT_PATH: "alt_ah_attr",
    M.IBV_QP_MIN_RNR_TIMER: "min_rnr_timer", M.IBV_QP_SQ_PSN: "sq_psn",
    M.IBV_QP_MAX_DEST_RD_ATOMIC: "max_dest_rd_atomic", M.IBV_QP_PATH_MIG_STATE: "path_mig_state",
    M.IBV_QP_CAP: "cap", M.IBV_QP_DEST_QPN: "dest_qp_num", M.IBV_QP_RATE_LIMIT: "rate_limit",
}
_KNOWN_BITS = int(sum(ATTR_FIELD))

Bound = int | Callable[[QPLimits], int]
# Integer attributes: bit -> (low, high); high may depend on the device limits.
RANGES: dict[M, tuple[Bound, Bound]] = {
    M.IBV_QP_STATE: (RESET, ERR), M.IBV_QP_CUR_STATE: (RESET, ERR),
    M.IBV_QP_PATH_MTU: (MTU.IBV_MTU_256, lambda lim: lim.max_mtu),
    M.IBV_QP_TIMEOUT: (0, 31), M.IBV_QP_RETRY_CNT: (0, 7), M.IBV_QP_RNR_RETRY: (0, 7),
    M.IBV_QP_MIN_RNR_TIMER: (0, 31), M.IBV_QP_RQ_PSN: (0, PSN_MAX), M.IBV_QP_SQ_PSN: (0, PSN_MAX),
    M.IBV_QP_DEST_QPN: (0, QPN_MAX), M.IBV_QP_QKEY: (0, QKEY_MAX),
    M.IBV_QP_MAX_QP_RD_ATOMIC: (0, lambda lim: lim.max_qp_init_rd_atom),
    M.IBV_QP_MAX_DEST_RD_ATOMIC: (0, lambda lim: lim.max_qp_rd_atom),
    M.IBV_QP_PORT: (1, lambda lim: lim.port_count),
    M.IBV_QP_PKEY_INDEX: (0, lambda lim: lim.pkey_tbl_len - 1),
    M.IBV_QP_PATH_MIG_STATE: (0, 2), M.IBV_QP_EN_SQD_ASYNC_NOTIFY: (0, 1),
}
# How a value of an enum-valued attribute is shown in messages.
_VALUE_ENUM: dict[M, type] = {M.IBV_QP_STATE: S, M.IBV_QP_CUR_STATE: S, M.IBV_QP_PATH_MTU: MTU}


def state_name(state: int) -> str:
    return S(state).name.removeprefix("IBV_QPS_") if state in S._value2member_map_ else str(state)


def mask_names(bits: int | tuple[M, ...]) -> str:
    """'IBV_QP_AV, IBV_QP_PATH_MTU' for a mask (bit order) or a tuple (its order)."""
    if isinstance(bits, int):
        bits = tuple(b for b in M if bits & b)
    return ", ".join(b.name for b in bits) or "none"


def masks_for(qp_type: int, cur: int, new: int) -> tuple[int, int] | None:
    """(required, optional) attr_mask bits of cur->new for qp_type, or None if not allowed."""
    entry = TRANSITIONS.get((cur, new), {}).get(qp_type)
    if entry is None:
        return None
    return int(sum(entry[0])), int(sum(entry[1]))


def allowed_next_states(qp_type: int, cur: int) -> list[S]:
    return [new for (c, new), per in TRANSITIONS.items() if c == cur and qp_type in per]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(bit: M, v: int) -> str:
    enum = _VALUE_ENUM.get(bit)
    return f"{enum(v).name} ({v})" if enum and v in enum._value2member_map_ else str(v)


def _check_range(what: str, bit: M | None, v: Any, lo: int, hi: int) -> None:
    label = f"{what} ({bit.name})" if bit is not None else what
    if not _is_int(v):
        raise einval(f"modify_qp: {label} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        if hi < lo:
            raise einval(f"modify_qp: {label} = {v}, but the device allows no valid value")
        show = (lambda x: _show(bit, x)) if bit is not None else str
        raise einval(f"modify_qp: {label} = {v} is out of range; allowed {show(lo)}..{show(hi)}")


def _check_ah_attr(name: str, ah: Any, lim: QPLimits) -> None:
    """struct ibv_ah_attr as a dict; RoCE addresses by GID, so a GRH is mandatory (A17.4)."""
    if not isinstance(ah, dict):
        raise einval(f"modify_qp: {name} must be a dict (struct ibv_ah_attr)")
    _check_range(f"{name}.port_num", None, ah.get("port_num"), 1, lim.port_count)
    if ah.get("is_global") != 1:
        raise einval(f"modify_qp: {name}.is_global must be 1: RoCE needs a GRH; set "
                     f"is_global=1 and fill {name}.grh with the destination GID")
    grh = ah.get("grh")
    if not isinstance(grh, dict):
        raise einval(f"modify_qp: {name}.grh must be a dict (struct ibv_global_route)")
    _check_range(f"{name}.grh.sgid_index", None, grh.get("sgid_index"), 0, lim.gid_tbl_len - 1)
    dgid = grh.get("dgid")
    if not isinstance(dgid, (bytes, bytearray)) or len(dgid) != 16:
        raise einval(f"modify_qp: {name}.grh.dgid must be 16 bytes (a GID), got {dgid!r}")
    for key, hi in (("hop_limit", 255), ("traffic_class", 255), ("flow_label", (1 << 20) - 1)):
        if key in grh:
            _check_range(f"{name}.grh.{key}", None, grh[key], 0, hi)
    if "sl" in ah:
        _check_range(f"{name}.sl", None, ah["sl"], 0, 15)


def _check_value(bit: M, v: Any, lim: QPLimits) -> None:
    if bit in RANGES:
        lo, hi = (b(lim) if callable(b) else b for b in RANGES[bit])
        _check_range(ATTR_FIELD[bit], bit, v, lo, hi)
    elif bit is M.IBV_QP_ACCESS_FLAGS:
        _check_range("qp_access_flags", bit, v, 0, (1 << 32) - 1)
        extra = v & ~QP_ACCESS_ALLOWED
        if extra:
            names = [Access(b).name if b in Access._value2member_map_ else hex(b)
                     for b in (1 << i for i in range(extra.bit_length())) if extra & b]
            raise einval(f"modify_qp: qp_access_flags (IBV_QP_ACCESS_FLAGS) = {v:#x} has "
                         f"flags a QP does not take: {', '.join(names)}; allowed: "
                         f"{' | '.join(a.name for a in Access if a & QP_ACCESS_ALLOWED)}")
    elif bit is M.IBV_QP_AV:
        _check_ah_attr("ah_attr", v, lim)
    elif bit is M.IBV_QP_ALT_PATH:
        # As the kernel (_ib_modify_qp): alternate paths / APM exist for InfiniBand only.
        raise einval("modify_qp: IBV_QP_ALT_PATH (alternate path, APM) is not supported on "
                     "RoCE; leave it out of attr_mask")


def check_modify(qp_type: int, cur_state: int, attr_mask: int, attr: dict[str, Any],
                 limits: QPLimits = DEFAULT_LIMITS) -> S:
    """Validate an ibv_modify_qp request against the QP's current state; return the new state.

    Raises VerbsError(EINVAL) with a message naming the libibverbs attributes involved.
    """
    if qp_type not in (RC, UC, UD, XINI, XTGT):
        raise einval(f"modify_qp: QP type {qp_type} is not supported; rnicd has "
                     "IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD, IBV_QPT_XRC_SEND, IBV_QPT_XRC_RECV")
    tname = T(qp_type).name.removeprefix("IBV_QPT_")
    cur = S(cur_state)
    if not _is_int(attr_mask) or attr_mask < 0:
        raise einval(f"modify_qp: attr_mask must be a non-negative integer, got {attr_mask!r}")
    attr_mask = int(attr_mask)
    if attr_mask & ~_KNOWN_BITS:
        raise einval(f"modify_qp: attr_mask has bits {attr_mask & ~_KNOWN_BITS:#x} that are no "
                     "IBV_QP_* attribute")
    bits = [b for b in M if attr_mask & b]
    missing_fields = [f"{ATTR_FIELD[b]} ({b.name})" for b in bits if ATTR_FIELD[b] not in attr]
    if missing_fields:
        raise einval("modify_qp: attr_mask sets bits whose values are missing from attr: "
                     + ", ".join(missing_fields))
    for b in (M.IBV_QP_STATE, M.IBV_QP_CUR_STATE):
        if attr_mask & b:
            _check_value(b, attr[ATTR_FIELD[b]], limits)

    new = S(attr["qp_state"]) if attr_mask & M.IBV_QP_STATE else cur
    tr = f"{state_name(cur)}->{state_name(new)}"
    masks = masks_for(qp_type, cur, new)
    if masks is None:
        nexts = ", ".join(state_name(s) for s in allowed_next_states(qp_type, cur))
        why = "" if attr_mask & M.IBV_QP_STATE else " (attr_mask has no IBV_QP_STATE, so the " \
            "QP would stay in its state)"
        raise einval(f"modify_qp: invalid transition {tr} for an {tname} QP{why}; from "
                     f"{state_name(cur)} it can go to: {nexts or 'nothing'}")
    required, optional = masks
    entry = TRANSITIONS[(cur, new)][T(qp_type)]
    if attr_mask & required != required:
        raise einval(f"modify_qp {tr} on an {tname} QP requires {mask_names(entry[0])}; "
                     f"missing: {mask_names(required & ~attr_mask)}")
    extra = attr_mask & ~(required | optional | int(M.IBV_QP_STATE))
    if extra:
        word = "attribute" if extra.bit_count() == 1 else "attributes"
        verb = "is" if extra.bit_count() == 1 else "are"
        raise einval(f"modify_qp {tr}: {word} {mask_names(extra)} {verb} not allowed for an "
                     f"{tname} QP in {tr}; optional here: {mask_names(entry[1])}")

    if attr_mask & M.IBV_QP_CUR_STATE:
        said = S(attr["cur_qp_state"])
        # The consumer may hold a stale view (e.g. RTS while the QP fell into SQE, IBTA
        # 10.3.1); accept it when said->new is itself a transition that takes CUR_STATE.
        said_masks = masks_for(qp_type, said, new)
        if said != cur and not (said_masks and said_masks[1] & M.IBV_QP_CUR_STATE):
            raise einval(f"modify_qp: cur_qp_state (IBV_QP_CUR_STATE) is {state_name(said)} "
                         f"but the QP is in {state_name(cur)}, and {state_name(said)}->"
                         f"{state_name(new)} is not a transition that accepts it; pass "
                         f"{state_name(cur)} or leave IBV_QP_CUR_STATE out")

    for b in bits:
        if b not in (M.IBV_QP_STATE, M.IBV_QP_CUR_STATE):
            _check_value(b, attr[ATTR_FIELD[b]], limits)
    return new


class QPStateMachine:
    """A QP's state (one Enum: abi.QPState); callers log the (old, new) pairs it returns."""

    HISTORY = 16

    def __init__(self, qp_type: int, state: int = RESET):
        self.qp_type = T(qp_type)
        self.state = S(state)
        self.history: list[tuple[S, S, str]] = []

    def transition(self, new: int, reason: str) -> tuple[S, S]:
        """Record a state change (from modify_qp or from the transport: SQE, ERR, drained)."""
        old, self.state = self.state, S(new)
        self.history.append((old, self.state, reason))
        del self.history[:-self.HISTORY]
        return old, self.state

    def modify(self, attr_mask: int, attr: dict[str, Any],
               limits: QPLimits = DEFAULT_LIMITS) -> tuple[S, S]:
        """Validate an ibv_modify_qp request and move to its new state."""
        new = check_modify(self.qp_type, self.state, attr_mask, attr, limits)
        return self.transition(new, "modify_qp")

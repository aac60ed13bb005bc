"""QP state machine and modify_qp validation (rnicd.core.qp_state)."""
import ast
import errno
import inspect

import pytest

from rnicd.core import qp_state
from rnicd.core.qp_state import (
    TRANSITIONS,
    QPLimits,
    QPStateMachine,
    allowed_next_states,
    check_modify,
    masks_for,
)
from rnicd.errors import VerbsError
from rnicd.wire.abi import MTU, Access, QPAttrMask, QPState, QPType

M, S = QPAttrMask, QPState
RC, UC, UD = QPType.IBV_QPT_RC, QPType.IBV_QPT_UC, QPType.IBV_QPT_UD
RESET, INIT, RTR, RTS = S.IBV_QPS_RESET, S.IBV_QPS_INIT, S.IBV_QPS_RTR, S.IBV_QPS_RTS
SQD, SQE, ERR = S.IBV_QPS_SQD, S.IBV_QPS_SQE, S.IBV_QPS_ERR

# The masks rdma-core's examples (rc_pingpong, ud_pingpong) use.
RC_INIT = M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS
RC_RTR = (M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN
          | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER)
RC_RTS = (M.IBV_QP_STATE | M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY
          | M.IBV_QP_SQ_PSN | M.IBV_QP_MAX_QP_RD_ATOMIC)
UC_INIT = RC_INIT
UC_RTR = M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN | M.IBV_QP_RQ_PSN
UD_INIT = M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY
UD_RTR = M.IBV_QP_STATE
UC_UD_RTS = M.IBV_QP_STATE | M.IBV_QP_SQ_PSN


def ah(**kw):
    a = {"port_num": 1, "is_global": 1, "sl": 0,
         "grh": {"dgid": bytes(10) + b"\xff\xff\x7f\x00\x00\x01", "sgid_index": 1,
                 "hop_limit": 64, "traffic_class": 0, "flow_label": 0}}
    a.update(kw)
    return a


def attrs(state=None, **kw):
    """A full, valid ibv_qp_attr; check_modify only reads the fields attr_mask names."""
    a = {"qp_state": state, "cur_qp_state": RTS, "path_mtu": MTU.IBV_MTU_1024,
         "dest_qp_num": 0x123, "rq_psn": 0x10, "sq_psn": 0x20, "timeout": 14, "retry_cnt": 7,
         "rnr_retry": 7, "min_rnr_timer": 12, "max_rd_atomic": 1, "max_dest_rd_atomic": 1,
         "qp_access_flags": Access.IBV_ACCESS_LOCAL_WRITE | Access.IBV_ACCESS_REMOTE_WRITE,
         "pkey_index": 0, "port_num": 1, "qkey": 0x11111111, "ah_attr": ah(),
         "path_mig_state": 0, "alt_ah_attr": ah(), "en_sqd_async_notify": 1,
         "cap": {"max_send_wr": 1}, "rate_limit": 0}
    a.update(kw)
    return a


def einval(*args, match=None, **kw):
    with pytest.raises(VerbsError) as ei:
        check_modify(*args, **kw)
    assert ei.value.code == errno.EINVAL
    if match is not None:
        assert match in ei.value.msg, ei.value.msg
    return ei.value.msg


# --- the standard sequences ------------------------------------------------------------------

@pytest.mark.parametrize("qpt, masks", [
    (RC, (RC_INIT, RC_RTR, RC_RTS)),
    (UC, (UC_INIT, UC_RTR, UC_UD_RTS)),
    (UD, (UD_INIT, UD_RTR, UC_UD_RTS)),
])
def test_bring_up_sequence(qpt, masks):
    qp = QPStateMachine(qpt)
    assert qp.state is RESET
    steps = []
    for mask, new in zip(masks, (INIT, RTR, RTS), strict=True):
        steps.append(qp.modify(mask, attrs(new)))
    assert steps == [(RESET, INIT), (INIT, RTR), (RTR, RTS)]
    assert qp.state is RTS
    assert [h[2] for h in qp.history] == ["modify_qp"] * 3


# --- required attributes ---------------------------------------------------------------------

REQUIRED_CASES = [
    (RC, RESET, INIT, RC_INIT), (RC, INIT, RTR, RC_RTR), (RC, RTR, RTS, RC_RTS),
    (UC, RESET, INIT, UC_INIT), (UC, INIT, RTR, UC_RTR), (UC, RTR, RTS, UC_UD_RTS),
    (UD, RESET, INIT, UD_INIT), (UD, RTR, RTS, UC_UD_RTS),
]


@pytest.mark.parametrize("qpt, cur, new, mask, bit", [
    (qpt, cur, new, mask, bit) for qpt, cur, new, mask in REQUIRED_CASES
    for bit in M if mask & bit and bit is not M.IBV_QP_STATE])
def test_each_missing_required_bit(qpt, cur, new, mask, bit):
    msg = einval(qpt, cur, mask & ~bit, attrs(new), match=f"missing: {bit.name}")
    assert f"{cur.name[8:]}->{new.name[8:]}" in msg


def test_missing_message_names_all_required_in_order():
    msg = einval(RC, INIT, RC_RTR & ~M.IBV_QP_DEST_QPN, attrs(RTR))
    assert msg == ("modify_qp INIT->RTR on an RC QP requires IBV_QP_AV, IBV_QP_PATH_MTU, "
                   "IBV_QP_DEST_QPN, IBV_QP_RQ_PSN, IBV_QP_MAX_DEST_RD_ATOMIC, "
                   "IBV_QP_MIN_RNR_TIMER; missing: IBV_QP_DEST_QPN")


# --- attributes a transition does not take ---------------------------------------------------

@pytest.mark.parametrize("qpt, cur, new, mask, extra", [
    (RC, INIT, RTR, RC_RTR, M.IBV_QP_QKEY),
    (RC, INIT, RTR, RC_RTR, M.IBV_QP_CUR_STATE),      # CUR_STATE only into RTS
    (RC, RTR, RTS, RC_RTS, M.IBV_QP_PATH_MTU),
    (UD, RESET, INIT, UD_INIT, M.IBV_QP_ACCESS_FLAGS),
    (UD, RTR, RTS, UC_UD_RTS, M.IBV_QP_TIMEOUT),
    (UC, RTR, RTS, UC_UD_RTS, M.IBV_QP_MIN_RNR_TIMER),  # RC only
    (RC, RESET, INIT, RC_INIT, M.IBV_QP_AV),
    (RC, RTS, SQD, M.IBV_QP_STATE, M.IBV_QP_TIMEOUT),
    (RC, RTS, RTS, M.IBV_QP_STATE, M.IBV_QP_CAP),       # QP resize: never
    (UD, RTS, RTS, M.IBV_QP_STATE, M.IBV_QP_RATE_LIMIT),  # raw packet QPs only
    (RC, RTS, ERR, M.IBV_QP_STATE, M.IBV_QP_SQ_PSN),
    (RC, ERR, RESET, M.IBV_QP_STATE, M.IBV_QP_PORT),
])
def test_forbidden_optional_bit(qpt, cur, new, mask, extra):
    tname = qpt.name[8:]
    tr = f"{cur.name[8:]}->{new.name[8:]}"
    einval(qpt, cur, mask | extra, attrs(new),
           match=f"attribute {extra.name} is not allowed for an {tname} QP in {tr}")


def test_several_forbidden_bits_listed():
    msg = einval(RC, INIT, RC_RTR | M.IBV_QP_QKEY | M.IBV_QP_SQ_PSN, attrs(RTR))
    assert "attributes IBV_QP_QKEY, IBV_QP_SQ_PSN are not allowed" in msg


def test_optional_bits_accepted():
    assert check_modify(RC, INIT, RC_RTR | M.IBV_QP_ACCESS_FLAGS | M.IBV_QP_PKEY_INDEX,
                        attrs(RTR)) is RTR
    assert check_modify(RC, RTR, RC_RTS | M.IBV_QP_MIN_RNR_TIMER, attrs(RTS)) is RTS
    assert check_modify(UD, INIT, UD_RTR | M.IBV_QP_QKEY, attrs(RTR)) is RTR
    assert check_modify(RC, RTS, M.IBV_QP_STATE | M.IBV_QP_EN_SQD_ASYNC_NOTIFY,
                        attrs(SQD)) is SQD
    sqd_rc = M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_TIMEOUT | M.IBV_QP_MAX_DEST_RD_ATOMIC
    assert check_modify(RC, SQD, sqd_rc, attrs(SQD)) is SQD


def test_alt_path_rejected_on_roce():
    einval(RC, INIT, RC_RTR | M.IBV_QP_ALT_PATH, attrs(RTR), match="not supported on RoCE")


# --- transitions -----------------------------------------------------------------------------

@pytest.mark.parametrize("qpt, cur, new", [
    (RC, RESET, RTR), (RC, RESET, RTS), (RC, INIT, RTS), (RC, RTR, SQD), (RC, RTR, INIT),
    (RC, RTS, INIT), (RC, RTS, RTR), (RC, SQD, INIT), (RC, ERR, RTS), (RC, ERR, INIT),
    (RC, RTS, SQE), (RC, SQE, RTS), (UD, RESET, SQD), (UC, SQE, SQD), (RC, RESET, ERR),
    (RC, RTR, RTR),
])
def test_invalid_transitions(qpt, cur, new):
    msg = einval(qpt, cur, M.IBV_QP_STATE, attrs(new),
                 match=f"invalid transition {cur.name[8:]}->{new.name[8:]}")
    assert f"from {cur.name[8:]} it can go to:" in msg


def test_invalid_transition_lists_next_states():
    msg = einval(RC, RESET, M.IBV_QP_STATE, attrs(RTS))
    assert msg == ("modify_qp: invalid transition RESET->RTS for an RC QP; from RESET it can "
                   "go to: RESET, INIT")


@pytest.mark.parametrize("qpt", [RC, UC, UD])
@pytest.mark.parametrize("cur", [INIT, RTR, RTS, SQD, SQE, ERR])
@pytest.mark.parametrize("new", [ERR, RESET])
def test_any_to_err_and_reset(qpt, cur, new):
    assert check_modify(qpt, cur, M.IBV_QP_STATE, attrs(new)) is new


def test_err_reset_and_bring_up_again():
    qp = QPStateMachine(RC, ERR)
    assert qp.modify(M.IBV_QP_STATE, attrs(RESET)) == (ERR, RESET)
    assert qp.modify(RC_INIT, attrs(INIT)) == (RESET, INIT)


@pytest.mark.parametrize("qpt", [UC, UD])
def test_sqe_to_rts(qpt):
    assert check_modify(qpt, SQE, M.IBV_QP_STATE, attrs(RTS)) is RTS
    assert check_modify(qpt, SQE, M.IBV_QP_STATE | M.IBV_QP_CUR_STATE,
                        attrs(RTS, cur_qp_state=SQE)) is RTS


def test_sqd_round_trip():
    qp = QPStateMachine(UD, RTS)
    assert qp.modify(M.IBV_QP_STATE, attrs(SQD)) == (RTS, SQD)
    assert qp.modify(M.IBV_QP_STATE | M.IBV_QP_QKEY, attrs(SQD)) == (SQD, SQD)
    assert qp.modify(M.IBV_QP_STATE, attrs(RTS)) == (SQD, RTS)


# --- a mask without IBV_QP_STATE is a same-state modify --------------------------------------

@pytest.mark.parametrize("qpt, cur, mask", [
    (RC, RTS, M.IBV_QP_MIN_RNR_TIMER), (UC, INIT, M.IBV_QP_ACCESS_FLAGS),
    (UD, RTS, M.IBV_QP_QKEY), (RC, RESET, 0), (RC, ERR, 0), (RC, SQD, M.IBV_QP_TIMEOUT),
])
def test_no_state_bit_keeps_state(qpt, cur, mask):
    assert check_modify(qpt, cur, mask, attrs()) is cur


def test_no_state_bit_where_no_same_state_transition():
    einval(RC, RTR, M.IBV_QP_MIN_RNR_TIMER, attrs(), match="has no IBV_QP_STATE")
    einval(RC, RESET, M.IBV_QP_PORT, attrs(), match="IBV_QP_PORT is not allowed")
    einval(RC, RTS, M.IBV_QP_TIMEOUT, attrs(), match="IBV_QP_TIMEOUT is not allowed")


# --- IBV_QP_CUR_STATE ------------------------------------------------------------------------

def test_cur_state_matching():
    mask = M.IBV_QP_STATE | M.IBV_QP_CUR_STATE
    assert check_modify(RC, RTS, mask, attrs(RTS, cur_qp_state=RTS)) is RTS
    assert check_modify(RC, RTR, RC_RTS | M.IBV_QP_CUR_STATE, attrs(RTS, cur_qp_state=RTR)) is RTS
    assert check_modify(RC, SQD, mask, attrs(RTS, cur_qp_state=SQD)) is RTS


def test_cur_state_stale_view_accepted():
    # The QP fell into SQE on a send error while the consumer still believes it is in RTS.
    mask = M.IBV_QP_STATE | M.IBV_QP_CUR_STATE
    assert check_modify(UD, SQE, mask, attrs(RTS, cur_qp_state=RTS)) is RTS


@pytest.mark.parametrize("qpt, cur, said", [
    (RC, RTS, INIT), (RC, RTS, RESET), (RC, RTS, ERR), (RC, SQD, SQE), (UC, RTS, INIT),
])
def test_cur_state_mismatch(qpt, cur, said):
    mask = M.IBV_QP_STATE | M.IBV_QP_CUR_STATE
    msg = einval(qpt, cur, mask, attrs(RTS, cur_qp_state=said),
                 match=f"cur_qp_state (IBV_QP_CUR_STATE) is {said.name[8:]}")
    assert f"the QP is in {cur.name[8:]}" in msg


def test_cur_state_not_a_state():
    einval(RC, RTS, M.IBV_QP_STATE | M.IBV_QP_CUR_STATE, attrs(RTS, cur_qp_state=7),
           match="allowed IBV_QPS_RESET (0)..IBV_QPS_ERR (6)")


# --- values ----------------------------------------------------------------------------------

SQD_RC = (RC, SQD, SQD)       # SQD->SQD takes most RC attributes as optional
VALUE_CASES = [
    # (qpt, cur, new, bit, field, bad value, message fragment)
    (RC, INIT, RTR, M.IBV_QP_PATH_MTU, "path_mtu", 0, "allowed IBV_MTU_256 (1)..IBV_MTU_4096"),
    (RC, INIT, RTR, M.IBV_QP_PATH_MTU, "path_mtu", 6, "path_mtu (IBV_QP_PATH_MTU) = 6"),
    (RC, INIT, RTR, M.IBV_QP_DEST_QPN, "dest_qp_num", 1 << 24, "allowed 0..16777215"),
    (RC, INIT, RTR, M.IBV_QP_RQ_PSN, "rq_psn", 1 << 24, "rq_psn (IBV_QP_RQ_PSN)"),
    (RC, INIT, RTR, M.IBV_QP_RQ_PSN, "rq_psn", -1, "allowed 0..16777215"),
    (RC, RTR, RTS, M.IBV_QP_SQ_PSN, "sq_psn", 1 << 24, "sq_psn (IBV_QP_SQ_PSN)"),
    (*SQD_RC, M.IBV_QP_TIMEOUT, "timeout", 32, "allowed 0..31"),
    (*SQD_RC, M.IBV_QP_TIMEOUT, "timeout", -1, "timeout (IBV_QP_TIMEOUT)"),
    (*SQD_RC, M.IBV_QP_RETRY_CNT, "retry_cnt", 8, "allowed 0..7"),
    (*SQD_RC, M.IBV_QP_RNR_RETRY, "rnr_retry", 8, "rnr_retry (IBV_QP_RNR_RETRY)"),
    (*SQD_RC, M.IBV_QP_MIN_RNR_TIMER, "min_rnr_timer", 32, "allowed 0..31"),
    (*SQD_RC, M.IBV_QP_MAX_QP_RD_ATOMIC, "max_rd_atomic", 17, "allowed 0..16"),
    (*SQD_RC, M.IBV_QP_MAX_DEST_RD_ATOMIC, "max_dest_rd_atomic", 17, "allowed 0..16"),
    (*SQD_RC, M.IBV_QP_PORT, "port_num", 0, "port_num (IBV_QP_PORT) = 0"),
    (*SQD_RC, M.IBV_QP_PORT, "port_num", 2, "allowed 1..1"),
    (*SQD_RC, M.IBV_QP_PKEY_INDEX, "pkey_index", 1, "allowed 0..0"),
    (*SQD_RC, M.IBV_QP_PATH_MIG_STATE, "path_mig_state", 3, "allowed 0..2"),
    (*SQD_RC, M.IBV_QP_ACCESS_FLAGS, "qp_access_flags", Access.IBV_ACCESS_MW_BIND,
     "IBV_ACCESS_MW_BIND"),
    (*SQD_RC, M.IBV_QP_ACCESS_FLAGS, "qp_access_flags", 1 << 9, "0x200"),
    (*SQD_RC, M.IBV_QP_ACCESS_FLAGS, "qp_access_flags", -1, "qp_access_flags"),
    (UD, INIT, INIT, M.IBV_QP_QKEY, "qkey", 1 << 32, "allowed 0..4294967295"),
    (UD, INIT, INIT, M.IBV_QP_QKEY, "qkey", -1, "qkey (IBV_QP_QKEY)"),
    (RC, RTS, SQD, M.IBV_QP_EN_SQD_ASYNC_NOTIFY, "en_sqd_async_notify", 2, "allowed 0..1"),
    (*SQD_RC, M.IBV_QP_TIMEOUT, "timeout", "14", "must be an integer, got str"),
    (*SQD_RC, M.IBV_QP_TIMEOUT, "timeout", None, "must be an integer"),
    (*SQD_RC, M.IBV_QP_RETRY_CNT, "retry_cnt", True, "must be an integer, got bool"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", "10.0.0.1", "ah_attr must be a dict"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(port_num=2), "ah_attr.port_num = 2"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(is_global=0), "RoCE needs a GRH"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(grh=None), "ah_attr.grh must be a dict"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(grh={"dgid": bytes(16), "sgid_index": 16}),
     "ah_attr.grh.sgid_index = 16 is out of range; allowed 0..15"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(grh={"dgid": bytes(15), "sgid_index": 0}),
     "dgid must be 16 bytes"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(grh={"dgid": "::1", "sgid_index": 0}),
     "dgid must be 16 bytes"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr",
     ah(grh={"dgid": bytes(16), "sgid_index": 0, "hop_limit": 256}), "grh.hop_limit"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr",
     ah(grh={"dgid": bytes(16), "sgid_index": 0, "flow_label": 1 << 20}), "grh.flow_label"),
    (*SQD_RC, M.IBV_QP_AV, "ah_attr", ah(sl=16), "ah_attr.sl"),
    (UC, INIT, RTR, M.IBV_QP_AV, "ah_attr", ah(is_global=0), "RoCE needs a GRH"),
]


def _mask_for(qpt, cur, new, bit):
    return int(masks_for(qpt, cur, new)[0]) | M.IBV_QP_STATE | bit


@pytest.mark.parametrize("qpt, cur, new, bit, field, bad, frag", VALUE_CASES)
def test_value_out_of_range(qpt, cur, new, bit, field, bad, frag):
    mask = _mask_for(qpt, cur, new, bit)
    assert check_modify(qpt, cur, mask, attrs(new)) is new     # valid values pass
    einval(qpt, cur, mask, attrs(new, **{field: bad}), match=frag)


@pytest.mark.parametrize("field, value", [
    ("timeout", 31), ("timeout", 0), ("retry_cnt", 7), ("rnr_retry", 0), ("min_rnr_timer", 31),
    ("max_rd_atomic", 16), ("max_dest_rd_atomic", 0), ("max_rd_atomic", 0),
    ("qp_access_flags", 0), ("qp_access_flags", 15), ("port_num", 1), ("path_mig_state", 2),
])
def test_value_edges_accepted(field, value):
    mask = _mask_for(*SQD_RC, next(b for b, f in qp_state.ATTR_FIELD.items() if f == field))
    assert check_modify(RC, SQD, mask, attrs(SQD, **{field: value})) is SQD


def test_psn_qpn_qkey_edges_accepted():
    top = (1 << 24) - 1
    assert check_modify(RC, INIT, RC_RTR, attrs(RTR, rq_psn=top, dest_qp_num=top,
                                                path_mtu=MTU.IBV_MTU_4096)) is RTR
    assert check_modify(RC, RTR, RC_RTS, attrs(RTS, sq_psn=top)) is RTS
    assert check_modify(UD, RESET, UD_INIT, attrs(INIT, qkey=(1 << 32) - 1)) is INIT


def test_limits_bound_values():
    lim = QPLimits(max_qp_rd_atom=8, max_qp_init_rd_atom=4, port_count=2, pkey_tbl_len=4,
                   gid_tbl_len=2, max_mtu=MTU.IBV_MTU_1024)
    # max_rd_atomic is the initiator depth, max_dest_rd_atomic the responder resources.
    rts = attrs(RTS, max_rd_atomic=4)
    assert check_modify(RC, RTR, RC_RTS, rts, lim) is RTS
    einval(RC, RTR, RC_RTS, attrs(RTS, max_rd_atomic=5), lim, match="allowed 0..4")
    rtr = attrs(RTR, max_dest_rd_atomic=8, path_mtu=MTU.IBV_MTU_1024)
    assert check_modify(RC, INIT, RC_RTR, rtr, lim) is RTR
    einval(RC, INIT, RC_RTR, attrs(RTR, max_dest_rd_atomic=9), lim, match="allowed 0..8")
    einval(RC, INIT, RC_RTR, attrs(RTR, path_mtu=MTU.IBV_MTU_2048), lim,
           match="allowed IBV_MTU_256 (1)..IBV_MTU_1024 (3)")
    assert check_modify(RC, RESET, RC_INIT, attrs(INIT, port_num=2, pkey_index=3), lim) is INIT
    einval(RC, RESET, RC_INIT, attrs(INIT, port_num=3), lim, match="allowed 1..2")
    einval(RC, INIT, RC_RTR, attrs(RTR, ah_attr=ah(grh={"dgid": bytes(16), "sgid_index": 2})),
           lim, match="allowed 0..1")


# --- malformed requests ----------------------------------------------------------------------

def test_mask_bit_without_value():
    a = attrs(RTR)
    del a["dest_qp_num"]
    einval(RC, INIT, RC_RTR, a, match="dest_qp_num (IBV_QP_DEST_QPN)")
    einval(RC, RESET, M.IBV_QP_STATE, {}, match="qp_state (IBV_QP_STATE)")


@pytest.mark.parametrize("mask, frag", [
    (M.IBV_QP_STATE | (1 << 21), "0x200000"), (1 << 30, "0x40000000"),
    (-1, "non-negative integer"), ("1", "non-negative integer"),
])
def test_bad_mask(mask, frag):
    einval(RC, RESET, mask, attrs(INIT), match=frag)


def test_target_state_not_a_state():
    einval(RC, RTS, M.IBV_QP_STATE, attrs(S.IBV_QPS_UNKNOWN), match="qp_state (IBV_QP_STATE) = 7")
    einval(RC, RTS, M.IBV_QP_STATE, attrs(-1), match="qp_state (IBV_QP_STATE) = -1")


def test_unsupported_qp_type():
    einval(8, RESET, RC_INIT, attrs(INIT), match="QP type 8 is not supported")


# --- the helper class ------------------------------------------------------------------------

def test_failed_modify_leaves_state():
    qp = QPStateMachine(RC)
    with pytest.raises(VerbsError):
        qp.modify(RC_RTR, attrs(RTR))
    assert qp.state is RESET and qp.history == []


def test_transition_records_reason_and_caps_history():
    qp = QPStateMachine(UC, RTS)
    assert qp.transition(SQE, "send error") == (RTS, SQE)
    assert qp.history[-1] == (RTS, SQE, "send error")
    for _ in range(40):
        qp.transition(ERR, "flush")
    assert len(qp.history) == QPStateMachine.HISTORY
    assert qp.state is ERR


# --- the table itself ------------------------------------------------------------------------

def test_table_shape():
    expected = {(RESET, RESET), (RESET, INIT), (INIT, INIT), (INIT, RTR), (RTR, RTS), (RTS, RTS),
                (RTS, SQD), (SQD, SQD), (SQD, RTS), (SQE, RTS)}
    expected |= {(s, t) for s in (INIT, RTR, RTS, SQD, SQE, ERR) for t in (RESET, ERR)}
    assert set(TRANSITIONS) == expected
    for (cur, new), per in TRANSITIONS.items():
        for req, opt in per.values():
            assert M.IBV_QP_STATE not in req + opt
            assert not set(req) & set(opt)
            if M.IBV_QP_CUR_STATE in opt:
                assert new is RTS and cur in (RTR, RTS, SQD, SQE)
    assert RC not in TRANSITIONS[(SQE, RTS)]
    assert allowed_next_states(RC, RESET) == [RESET, INIT]
    assert masks_for(RC, RESET, RTS) is None


def test_sans_io():
    tree = ast.parse(inspect.getsource(qp_state))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"asyncio", "socket", "os", "time", "pyroute2"}

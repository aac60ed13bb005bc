"""rnic client objects that need no daemon: WRs, attributes, GIDs, enums, errors, paths."""
import errno
import pathlib
import pickle
import sys

import pytest

_CLIENT = pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"
if str(_CLIENT) not in sys.path:
    sys.path.insert(0, str(_CLIENT))

import rnic  # noqa: E402
import rnic.enums as e  # noqa: E402
from rnic._conn import DEFAULT_SOCKET, Connection, socket_path  # noqa: E402
from rnic.addr import GID, AHAttr, GlobalRoute  # noqa: E402
from rnic.cq import WC  # noqa: E402
from rnic.errors import RnicError  # noqa: E402
from rnic.pyverbs_error import (  # noqa: E402
    PyverbsError,
    PyverbsRDMAError,
    PyverbsUserError,
)
from rnic.qp import QPAttr, QPCap, QPInitAttr  # noqa: E402
from rnic.srq import SrqAttr, SrqInitAttr  # noqa: E402
from rnic.wr import SGE, RecvWR, SendWR, wr_chain  # noqa: E402


def test_version_and_docstring():
    assert rnic.__version__
    assert "pyverbs" in rnic.__doc__


# ---- enums --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,value", [
    ("IBV_QPT_RC", 2), ("IBV_QPT_UC", 3), ("IBV_QPT_UD", 4),
    ("IBV_QPS_RESET", 0), ("IBV_QPS_RTS", 3), ("IBV_QPS_ERR", 6),
    ("IBV_WR_RDMA_WRITE", 0), ("IBV_WR_SEND", 2), ("IBV_WR_ATOMIC_FETCH_AND_ADD", 6),
    ("IBV_SEND_SIGNALED", 2), ("IBV_SEND_INLINE", 8),
    ("IBV_WC_SUCCESS", 0), ("IBV_WC_WR_FLUSH_ERR", 5), ("IBV_WC_RECV", 128),
    ("IBV_WC_RECV_RDMA_WITH_IMM", 129), ("IBV_WC_WITH_IMM", 2),
    ("IBV_ACCESS_LOCAL_WRITE", 1), ("IBV_ACCESS_REMOTE_ATOMIC", 8),
    ("IBV_QP_STATE", 1), ("IBV_QP_AV", 1 << 7), ("IBV_QP_DEST_QPN", 1 << 20),
    ("IBV_MTU_1024", 3), ("IBV_EVENT_SRQ_LIMIT_REACHED", 15), ("IBV_SRQ_LIMIT", 2),
])
def test_enum_values_match_libibverbs(name, value):
    assert getattr(e, name) == value


def test_enum_classes_are_reexported():
    assert e.QPType.IBV_QPT_RC == e.IBV_QPT_RC
    assert e.WCStatus(12).name == "IBV_WC_RETRY_EXC_ERR"
    assert e.mtu_bytes(e.IBV_MTU_4096) == 4096


# ---- errors -------------------------------------------------------------------------------
def test_rnic_error_fields():
    err = RnicError(errno.EINVAL, "reg_mr: length 0")
    assert isinstance(err, OSError)
    assert err.code == err.errno == errno.EINVAL
    assert err.name == "EINVAL"
    assert err.msg == "reg_mr: length 0"
    assert str(err) == "[EINVAL] reg_mr: length 0"
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.msg, type(again)) == (err.code, err.msg, RnicError)


def test_enoent_stays_rnic_error():
    err = RnicError(errno.ENOENT, "x")
    assert type(err) is RnicError and err.name == "ENOENT"


def test_pyverbs_error_shapes():
    """pyverbs' classes and constructors (rdma-core 44 pyverbs_error.py); RnicError is one."""
    err = PyverbsRDMAError("Failed to register a MR", errno.EINVAL)
    assert err.error_code == errno.EINVAL
    assert str(err) == "Failed to register a MR. Errno: 22, Invalid argument"
    assert PyverbsRDMAError("no errno").error_code == -1
    user = PyverbsUserError("Invalid GID")
    assert isinstance(user, PyverbsError) and not isinstance(user, PyverbsRDMAError)
    assert str(user) == "Invalid GID"
    rnic_err = RnicError(errno.EOPNOTSUPP, "XRC is not offered")
    assert isinstance(rnic_err, PyverbsRDMAError) and isinstance(rnic_err, OSError)
    assert rnic_err.error_code == rnic_err.code == errno.EOPNOTSUPP


# ---- socket path --------------------------------------------------------------------------
def test_socket_path_order():
    env = {"RNIC_SOCKET": "/tmp/a.sock", "XDG_RUNTIME_DIR": "/run/user/7"}
    assert socket_path("/x.sock", env) == "/x.sock"
    assert socket_path(pathlib.Path("/y.sock"), env) == "/y.sock"
    assert socket_path(None, env) == "/tmp/a.sock"
    assert socket_path(None, {"XDG_RUNTIME_DIR": "/run/user/7"}) == \
        "/run/user/7/rnicd/rnicd.sock"
    assert socket_path(None, {}) == DEFAULT_SOCKET == "/run/rnicd/rnicd.sock"


def test_unreachable_daemon_says_what_to_do(tmp_path):
    path = tmp_path / "nothing.sock"
    with pytest.raises(RnicError) as ei:
        Connection(str(path))
    assert ei.value.code == errno.ENOENT
    assert str(path) in ei.value.msg and "make run" in ei.value.msg


# ---- GIDs and addresses -------------------------------------------------------------------
V4MAPPED = "0000:0000:0000:0000:0000:ffff:7f00:0001"


def test_gid_forms():
    raw = bytes(10) + b"\xff\xff\x7f\x00\x00\x01"
    for val in (V4MAPPED, "::ffff:127.0.0.1", "127.0.0.1", raw, GID(raw)):
        g = GID(val)
        assert g.raw == raw and g.gid == V4MAPPED and str(g) == V4MAPPED
    assert GID().raw == bytes(16)
    assert GID(raw) == V4MAPPED and GID(raw) == GID(V4MAPPED)
    g = GID()
    g.gid = "fe80::1"
    assert g.gid == "fe80:0000:0000:0000:0000:0000:0000:0001"


@pytest.mark.parametrize("bad", ["zz::", b"short", "1:2:3", 42])
def test_gid_rejects(bad):
    with pytest.raises(RnicError) as ei:
        GID(bad)
    assert ei.value.code == errno.EINVAL


def test_global_route_and_ah_attr():
    gr = GlobalRoute(dgid=V4MAPPED, sgid_index=1, hop_limit=64)
    assert gr.dgid == V4MAPPED
    ah = AHAttr(gr=gr, sl=3)
    assert ah.is_global == 1 and ah.grh is gr and ah.dgid == V4MAPPED
    d = ah.to_dict()
    assert d["is_global"] == 1 and d["port_num"] == 1 and d["sl"] == 3
    assert d["grh"] == {"dgid": GID(V4MAPPED).raw, "flow_label": 0, "sgid_index": 1,
                        "hop_limit": 64, "traffic_class": 0}
    back = AHAttr.from_dict(d)
    assert back.dgid == V4MAPPED and back.sgid_index == 1 and back.is_global == 1
    assert AHAttr().is_global == 0


# ---- QP attributes ------------------------------------------------------------------------
def test_qp_defaults_follow_pyverbs():
    cap = QPCap()
    assert cap.to_dict() == {"max_send_wr": 1, "max_recv_wr": 10, "max_send_sge": 1,
                             "max_recv_sge": 1, "max_inline_data": 0}
    ia = QPInitAttr()
    assert ia.qp_type == e.IBV_QPT_UD and ia.sq_sig_all == 1 and ia.max_recv_wr == 10
    a = QPAttr()
    assert (a.qp_state, a.cur_qp_state, a.port_num, a.path_mtu) == \
        (e.IBV_QPS_INIT, e.IBV_QPS_RESET, 1, e.IBV_MTU_1024)
    assert (a.timeout, a.retry_cnt, a.rnr_retry, a.min_rnr_timer) == (14, 7, 7, 12)
    assert (a.max_rd_atomic, a.max_dest_rd_atomic, a.qp_access_flags) == (1, 1, 0)
    for field in ("path_mig_state", "qkey", "rq_psn", "sq_psn", "dest_qp_num", "cap",
                  "ah_attr", "alt_ah_attr", "pkey_index", "alt_pkey_index",
                  "en_sqd_async_notify", "sq_draining", "alt_port_num", "alt_timeout",
                  "rate_limit"):
        assert hasattr(a, field)
    with pytest.raises(TypeError):
        QPAttr(no_such_field=1)


def test_qp_attr_to_dict_sends_masked_fields_only():
    a = QPAttr(qp_state=e.IBV_QPS_RTR, dest_qp_num=17, rq_psn=5)
    a.ah_attr = AHAttr(gr=GlobalRoute(dgid=V4MAPPED))
    mask = e.IBV_QP_STATE | e.IBV_QP_AV | e.IBV_QP_DEST_QPN | e.IBV_QP_RQ_PSN
    d = a.to_dict(mask)
    assert set(d) == {"qp_state", "ah_attr", "dest_qp_num", "rq_psn"}
    assert d["qp_state"] == 2 and type(d["qp_state"]) is int
    assert d["ah_attr"]["grh"]["dgid"] == GID(V4MAPPED).raw
    assert a.to_dict(e.IBV_QP_CAP)["cap"]["max_recv_wr"] == 10
    back = QPAttr.from_dict(d)
    assert back.dest_qp_num == 17 and back.ah_attr.dgid == V4MAPPED


def test_srq_attrs():
    assert (SrqAttr().max_wr, SrqAttr().max_sge, SrqAttr().srq_limit) == (100, 1, 0)
    ia = SrqInitAttr(SrqAttr(max_wr=8, srq_limit=2))
    assert (ia.max_wr, ia.srq_limit) == (8, 2)


# ---- work requests ------------------------------------------------------------------------
def test_send_wr_defaults_and_setters():
    sge = SGE(0x1000, 64, 0x42)
    wr = SendWR(wr_id=7, sg=[sge], num_sge=1)
    assert wr.opcode == e.IBV_WR_SEND and wr.send_flags == e.IBV_SEND_SIGNALED
    assert wr.num_sge == 1 and wr.sg_list == [sge] and wr.imm_data == 0
    wr.set_wr_rdma(rkey=5, addr=0x2000)
    assert (wr.rkey, wr.remote_addr) == (5, 0x2000)
    wr.set_wr_atomic(6, 0x3000, compare_add=1, swap=2)
    assert (wr.rkey, wr.remote_addr, wr.compare_add, wr.swap) == (6, 0x3000, 1, 2)
    wr.set_wr_ud("ah", 0x11, 0x22)
    assert (wr.ah, wr.remote_qpn, wr.remote_qkey) == ("ah", 0x11, 0x22)
    assert "IBV_WR_SEND" in repr(wr)


def test_num_sge_semantics():
    sg = [SGE(1, 1, 1), SGE(2, 2, 2)]
    assert SendWR(sg=sg).num_sge == 2          # 0 = all of sg
    assert SendWR(sg=sg, num_sge=1).sg == sg[:1]
    assert RecvWR(sg=sg[0]).num_sge == 1
    assert RecvWR().num_sge == 0
    with pytest.raises(RnicError):
        RecvWR(sg=sg, num_sge=3)


def test_wr_chains():
    a, b, c = RecvWR(wr_id=1), RecvWR(wr_id=2), RecvWR(wr_id=3)
    a.next_wr = b
    b.next_wr = c
    assert [w.wr_id for w in wr_chain(a)] == [1, 2, 3]
    assert [w.wr_id for w in wr_chain([c, RecvWR(wr_id=4)])] == [3, 4]
    c.next_wr = a
    with pytest.raises(RnicError):
        wr_chain(a)


def test_wc_repr_names_fields():
    wc = WC(wr_id=3, status=e.IBV_WC_SUCCESS, opcode=e.IBV_WC_RECV, byte_len=10,
            imm_data=0xDEADBEEF, wc_flags=e.IBV_WC_WITH_IMM)
    r = repr(wc)
    assert "IBV_WC_SUCCESS" in r and "IBV_WC_RECV" in r and "0xdeadbeef" in r
    for name in ("wr_id", "status", "opcode", "vendor_err", "byte_len", "imm_data", "qp_num",
                 "src_qp", "wc_flags", "pkey_index", "slid", "sl", "dlid_path_bits"):
        assert hasattr(wc, name)

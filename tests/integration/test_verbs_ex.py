"""The pyverbs 44 verbs added for rdma-core's suite, against real daemons: the extended device
query, GID entries, the device list, QPEx (ibv_wr_* API) and CQEX (start/next/end poll), and
the capabilities rnicd does not offer answering EOPNOTSUPP."""
import errno
import os
import socket

import pytest
import rnic.enums as e
from rc_pair import ACCESS, connect
from rnic.cq import CQ, CQEX, CqInitAttrEx, PollCqAttr
from rnic.device import Context, get_device_list
from rnic.mr import MR
from rnic.pd import PD
from rnic.pyverbs_error import PyverbsRDMAError
from rnic.qp import QP, QPCap, QPEx, QPInitAttrEx
from rnic.srq import SRQ, SrqInitAttrEx
from rnic.wr import SGE, RecvWR
from rnic.xrcd import XRCD, XRCDInitAttr


def test_query_device_ex_is_truthful(rnicd):
    d = rnicd("dx")
    with Context(socket=d.socket) as ctx:
        attr, ex = ctx.query_device(), ctx.query_device_ex()
        assert ex.orig_attr.max_qp == attr.max_qp and ex.orig_attr.fw_version == attr.fw_ver
        flags = attr.device_cap_flags
        assert flags & e.IBV_DEVICE_RC_RNR_NAK_GEN and flags & e.IBV_DEVICE_PORT_ACTIVE_EVENT
        assert flags & e.IBV_DEVICE_XRC                 # XRC domains, SRQs, INI/TGT QPs
        assert not flags & (e.IBV_DEVICE_MEM_WINDOW_TYPE_2A | e.IBV_DEVICE_MANAGED_FLOW_STEERING)
        # memory windows, type 1 and 2B (IBTA 10.6.7)
        assert flags & e.IBV_DEVICE_MEM_WINDOW and flags & e.IBV_DEVICE_MEM_WINDOW_TYPE_2B
        assert ex.device_cap_flags_ex == flags
        assert ex.odp_caps.general_caps == 0 and ex.max_dm_size == 0
        assert ex.tm_caps.max_num_tags == 0 and ex.rss_caps.supported_qpts == 0
        assert ex.phys_port_cnt_ex == 1 and attr.max_mw == 1 << 16
        assert attr.max_ah == 1 << 16          # UD address handles (ibv_create_ah)
        # one completion vector per engine: by default one per CPU (docs/engines.md)
        assert ctx.num_comp_vectors == len(os.sched_getaffinity(0))


def test_gid_entries_and_device_list(rnicd, monkeypatch):
    d = rnicd("gid")
    with Context(socket=d.socket) as ctx:
        gid = ctx.query_gid(1, 0)
        entry = ctx.query_gid_ex(1, 0)
        assert entry.gid_str() == gid.gid and entry.gid_type == e.IBV_GID_TYPE_ROCE_V2
        assert ctx.query_gid_type(1, 0) == e.IBV_GID_TYPE_SYSFS_ROCE_V2
        table = ctx.query_gid_table(16)       # the valid entries only
        assert [t.gid_str() for t in table][0] == gid.gid and len(table) < 16
        with pytest.raises(PyverbsRDMAError) as ex:
            ctx.query_gid_table(0)
        assert ex.value.error_code == -errno.EINVAL     # libibverbs' return value, as pyverbs
        with pytest.raises(PyverbsRDMAError) as ex:
            ctx.query_gid_ex(1, 15)                    # an empty entry
        assert ex.value.error_code == errno.ENODATA
        with pytest.raises(PyverbsRDMAError) as ex:
            ctx.query_port(9)
        assert "Failed to query port" in ex.value.args[0] and "Invalid argument" in \
            ex.value.args[0]
        assert ctx.query_pkey(1, 0) == 0xFFFF
    monkeypatch.setenv("RNIC_SOCKET", d.socket)
    devs = get_device_list()
    assert [x.name for x in devs] == [b"rnic0"]
    monkeypatch.setenv("RNIC_SOCKET", d.socket + ".absent")
    assert get_device_list() == []


class ExSide:
    """Context, PD, MR, a CQEX and an RC QPEx (send, write, read, atomics)."""

    def __init__(self, daemon):
        self.ctx = Context(socket=daemon.socket)
        self.pd = PD(self.ctx)
        self.mr = MR(self.pd, 1 << 16, ACCESS)
        self.cq = CQEX(self.ctx, CqInitAttrEx(cqe=256, wc_flags=e.IBV_WC_EX_WITH_BYTE_LEN
                                              | e.IBV_WC_EX_WITH_IMM
                                              | e.IBV_WC_EX_WITH_QP_NUM))
        ops = (e.IBV_QP_EX_WITH_SEND | e.IBV_QP_EX_WITH_SEND_WITH_IMM
               | e.IBV_QP_EX_WITH_RDMA_WRITE | e.IBV_QP_EX_WITH_RDMA_READ
               | e.IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD)
        attr = QPInitAttrEx(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq,
                            cap=QPCap(32, 32, 2, 2), comp_mask=e.IBV_QP_INIT_ATTR_PD
                            | e.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, pd=self.pd,
                            send_ops_flags=ops)
        self.qp = QPEx(self.ctx, attr)
        self.gid = self.ctx.query_gid(1, 0)

    def close(self):
        self.ctx.close()


def poll_ex(cq, n, timeout=20.0):
    """[(wr_id, status, opcode, byte_len, qp_num)] of n completions through CQEX."""
    import time
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        rc = cq.start_poll(PollCqAttr())
        if rc == errno.ENOENT:
            assert time.monotonic() < deadline, f"{len(out)} of {n} completions"
            time.sleep(0.0005)
            continue
        assert rc == 0
        while rc == 0 and len(out) < n:
            out.append((cq.wr_id, cq.status, cq.read_opcode(), cq.read_byte_len(),
                        cq.read_qp_num()))
            rc = cq.poll_next()
        cq.end_poll()
    return out


def test_qpex_wr_api_and_cqex_poll(two_daemons):
    a, b = ExSide(two_daemons[0]), ExSide(two_daemons[1])
    try:
        connect(a, b)
        data = os.urandom(1000)
        a.mr.write(data, len(data), 0)
        b.qp.post_recv(RecvWR(wr_id=70, num_sge=1, sg=[SGE(b.mr.buf, 4096, b.mr.lkey)]))
        a.qp.wr_start()
        a.qp.wr_id, a.qp.wr_flags = 1, e.IBV_SEND_SIGNALED
        a.qp.wr_send()
        a.qp.wr_set_sge(SGE(a.mr.buf, 100, a.mr.lkey))
        a.qp.wr_id = 2
        a.qp.wr_rdma_write(b.mr.rkey, b.mr.buf + 8192)
        a.qp.wr_set_sge(SGE(a.mr.buf, 1000, a.mr.lkey))
        a.qp.wr_complete()
        got = poll_ex(a.cq, 2)
        assert [(w[0], w[1]) for w in got] == [(1, e.IBV_WC_SUCCESS), (2, e.IBV_WC_SUCCESS)]
        assert got[0][2] == e.IBV_WC_SEND and got[1][2] == e.IBV_WC_RDMA_WRITE
        recv = poll_ex(b.cq, 1)[0]
        assert recv[:4] == (70, e.IBV_WC_SUCCESS, e.IBV_WC_RECV, 100)
        assert recv[4] == b.qp.qp_num
        assert b.mr.read(100, 0) == data[:100] and b.mr.read(1000, 8192) == data

        a.qp.wr_start()          # RDMA READ back, then abort a second list
        a.qp.wr_id = 3
        a.qp.wr_rdma_read(b.mr.rkey, b.mr.buf + 8192)
        a.qp.wr_set_sge(SGE(a.mr.buf + 4096, 1000, a.mr.lkey))
        a.qp.wr_complete()
        assert poll_ex(a.cq, 1)[0][:2] == (3, e.IBV_WC_SUCCESS)
        assert a.mr.read(1000, 4096) == data
        a.qp.wr_start()
        a.qp.wr_send()
        a.qp.wr_abort()
        assert a.cq.start_poll(PollCqAttr()) == errno.ENOENT

        # the immediate: QPEx takes it in host order; the CQE holds it as it travelled, in
        # network order, for the reader's ntohl (as libibverbs' __be32 fields)
        b.qp.post_recv(RecvWR(wr_id=71, num_sge=1, sg=[SGE(b.mr.buf, 4096, b.mr.lkey)]))
        a.qp.wr_start()
        a.qp.wr_id = 4
        a.qp.wr_send_imm(0x12345678)
        a.qp.wr_set_sge(SGE(a.mr.buf, 10, a.mr.lkey))
        a.qp.wr_complete()
        assert poll_ex(a.cq, 1)[0][:2] == (4, e.IBV_WC_SUCCESS)
        assert b.cq.start_poll(PollCqAttr()) == 0
        assert (b.cq.wr_id, socket.ntohl(b.cq.read_imm_data())) == (71, 0x12345678)
        b.cq.end_poll()

        a.qp.wr_start()          # an op outside send_ops_flags fails at wr_complete
        a.qp.wr_atomic_cmp_swp(b.mr.rkey, b.mr.buf, 0, 1)
        a.qp.wr_set_sge(SGE(a.mr.buf, 8, a.mr.lkey))
        with pytest.raises(PyverbsRDMAError) as ex:
            a.qp.wr_complete()
        assert ex.value.error_code == errno.EINVAL
    finally:
        a.close()
        b.close()


def _tm_srq(pd):
    a = SrqInitAttrEx()
    a.srq_type, a.pd = e.IBV_SRQT_TM, pd
    return a


def test_not_offered_answers_eopnotsupp(rnicd):
    d = rnicd("nx")
    with Context(socket=d.socket) as ctx, PD(ctx) as pd:
        cq = CQ(ctx, 8)
        for make in (lambda: XRCD(ctx, XRCDInitAttr(e.IBV_XRCD_INIT_ATTR_RESERVED, 0, -1)),
                     lambda: SRQ(ctx, _tm_srq(pd)),
                     lambda: QP(pd, QPInitAttrEx(qp_type=8, scq=cq, rcq=cq)),
                     lambda: CQEX(ctx, CqInitAttrEx(
                         wc_flags=e.IBV_WC_EX_WITH_COMPLETION_TIMESTAMP)),
                     lambda: QPEx(ctx, QPInitAttrEx(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                                    pd=pd,
                                                    send_ops_flags=e.IBV_QP_EX_WITH_TSO))):
            with pytest.raises(PyverbsRDMAError) as ex:
                make()
            assert ex.value.error_code == errno.EOPNOTSUPP
        with pytest.raises(PyverbsRDMAError, match="Failed to register a MR"):
            MR(pd, 4096, e.IBV_ACCESS_REMOTE_WRITE)
        assert ctx.get_objects()["qps"] == 0

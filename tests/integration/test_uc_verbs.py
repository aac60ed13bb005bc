"""UC QPs between two real daemons (IBTA 9.8): SENDs and RDMA WRITEs at several sizes and
MTUs, a lossy path that loses whole messages and nothing else, and what UC refuses."""
import errno
import struct
import time

import pytest
import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.cq import CQ
from rnic.errors import RnicError
from rnic.qp import QPAttr, QPCap, QPEx, QPInitAttrEx
from rnic.wr import SGE, RecvWR, SendWR

UC_ACCESS = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE


def uc_pair(da, db, mtu, **kw):
    a = Side(da, mr_size=1 << 22, qp_type=e.IBV_QPT_UC, **kw)
    b = Side(db, mr_size=1 << 22, qp_type=e.IBV_QPT_UC, **kw)
    connect(a, b, mtu=mtu, qp_access=UC_ACCESS)
    return a, b


def send_wr(wr_id, opcode, sge, imm=0, raddr=None, rkey=None, flags=e.IBV_SEND_SIGNALED):
    w = SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[sge], send_flags=flags)
    w.imm_data = imm
    if raddr is not None:
        w.set_wr_rdma(rkey, raddr)
    return w


def drain(cq, quiet=0.5, timeout=30.0):
    """Every completion until none came for `quiet` seconds."""
    wcs, last, end = [], time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < end:
        got, batch = cq.poll(64)
        if got:
            wcs.extend(batch)
            last = time.monotonic()
        elif time.monotonic() - last > quiet:
            break
        else:
            time.sleep(0.001)
    return wcs


@pytest.mark.parametrize("mtu", [e.IBV_MTU_256, e.IBV_MTU_1024, e.IBV_MTU_4096])
def test_every_uc_opcode_at_several_sizes(two_daemons, mtu):
    da, db = two_daemons
    a, b = uc_pair(da, db, mtu)
    try:
        mtu_b = 128 << mtu
        sizes = [0, 1, mtu_b, mtu_b + 1, 3 * mtu_b, 65536]
        data = bytes((i * 7 + 3) & 0xFF for i in range(65536 + 64))
        a.mr.write(data, len(data), 0)
        for i in range(3 * len(sizes)):
            b.qp.post_recv(RecvWR(wr_id=100 + i, num_sge=1,
                                  sg=[SGE(b.mr.buf + i * 65536, 65536, b.mr.lkey)]))
        wr_id = 0
        for i, n in enumerate(sizes):
            sge = SGE(a.mr.buf + i, n, a.mr.lkey)
            wr_base = 2 << 20
            a.qp.post_send(send_wr(wr_id, e.IBV_WR_SEND, sge))
            a.qp.post_send(send_wr(wr_id + 1, e.IBV_WR_SEND_WITH_IMM, sge, imm=0x100 + i))
            a.qp.post_send(send_wr(wr_id + 2, e.IBV_WR_RDMA_WRITE, sge, rkey=b.mr.rkey,
                                   raddr=b.mr.buf + wr_base + i * 2 * 65536))
            a.qp.post_send(send_wr(wr_id + 3, e.IBV_WR_RDMA_WRITE_WITH_IMM, sge, imm=0x200 + i,
                                   rkey=b.mr.rkey,
                                   raddr=b.mr.buf + wr_base + (i * 2 + 1) * 65536))
            wr_id += 4
        wa = poll_n(a.cq, wr_id)
        assert [(w.wr_id, w.status) for w in wa] == [(k, e.IBV_WC_SUCCESS) for k in range(wr_id)]
        assert [w.opcode for w in wa[:4]] == [e.IBV_WC_SEND, e.IBV_WC_SEND, e.IBV_WC_RDMA_WRITE,
                                              e.IBV_WC_RDMA_WRITE]
        wb = poll_n(b.cq, 3 * len(sizes))
        assert all(w.status == e.IBV_WC_SUCCESS for w in wb)
        want = []
        for i, n in enumerate(sizes):
            want += [(e.IBV_WC_RECV, n, False), (e.IBV_WC_RECV, n, 0x100 + i),
                     (e.IBV_WC_RECV_RDMA_WITH_IMM, n, 0x200 + i)]
        got = [(w.opcode, w.byte_len, w.imm_data if w.wc_flags & e.IBV_WC_WITH_IMM else False)
               for w in wb]
        assert got == want
        recv = [w.wr_id - 100 for w in wb if w.opcode == e.IBV_WC_RECV]
        assert len(recv) == 2 * len(sizes)
        assert [w.wr_id - 100 for w in wb] == list(range(3 * len(sizes)))   # in order
        for k, i in zip(recv, (i for i in range(len(sizes)) for _ in (0, 1)), strict=True):
            n = sizes[i]
            assert b.mr.read(n, k * 65536) == data[i:i + n]
        for i, n in enumerate(sizes):
            for j in (0, 1):
                assert b.mr.read(n, (2 << 20) + (i * 2 + j) * 65536) == data[i:i + n]
        cb = b.ctx.get_counters()
        assert cb.get("sent_pkts", 0) == 0                  # no ACK, no NAK: UC is one-way
        assert cb.get("out_of_seq_request", 0) == 0
    finally:
        a.close()
        b.close()


def test_lost_packets_lose_their_messages_only(rnicd):
    """The sender's daemon drops 3% of its packets: each SEND of 8 packets either arrives
    whole, in order, in the next receive WQE, or not at all; the sender completes every WR
    successfully (UC never learns of the loss); after the loss stops, messages arrive."""
    da, db = rnicd("a", "drop=0.03,seed=5"), rnicd("b")
    a, b = uc_pair(da, db, e.IBV_MTU_1024, wr=512, cqe=2048)
    try:
        n, size = 300, 8192
        for i in range(n + 1):
            b.qp.post_recv(RecvWR(wr_id=i, num_sge=1,
                                  sg=[SGE(b.mr.buf + (i % 400) * size, size, b.mr.lkey)]))
        for i in range(n):
            msg = struct.pack("!I", i) * (size // 4)
            a.mr.write(msg, size, (i % 256) * size)
            a.qp.post_send(send_wr(i, e.IBV_WR_SEND, SGE(a.mr.buf + (i % 256) * size, size,
                                                          a.mr.lkey)))
            if i % 200 == 199:
                poll_n(a.cq, 200)
        wa = poll_n(a.cq, n % 200)
        assert all(w.status == e.IBV_WC_SUCCESS for w in wa)
        wb = drain(b.cq)
        assert all(w.status == e.IBV_WC_SUCCESS and w.byte_len == size for w in wb)
        # the WQEs complete in order: k-th completion is WQE k, whatever message it holds
        assert [w.wr_id for w in wb] == list(range(len(wb)))
        got = []
        for w in wb:
            body = b.mr.read(size, (w.wr_id % 400) * size)
            idx = struct.unpack("!I", body[:4])[0]
            assert body == struct.pack("!I", idx) * (size // 4), f"message {idx} torn"
            got.append(idx)
        assert got == sorted(set(got))                       # in order, none twice
        assert 0 < len(got) < n, "the fault injection lost nothing (or everything)"
        cb = b.ctx.get_counters()
        assert cb["out_of_seq_request"] > 0 and cb.get("sent_pkts", 0) == 0
        assert da_counter(a, "fault_drop") > 0
        # the path heals: the next message arrives whole, into the next receive WQE
        a.ctx.set_fault(drop=0.0)
        msg = b"after" * 400
        a.mr.write(msg, len(msg), 0)
        a.qp.post_send(send_wr(n, e.IBV_WR_SEND, SGE(a.mr.buf, len(msg), a.mr.lkey)))
        last = poll_n(b.cq, 1)[0]
        assert (last.wr_id, last.byte_len) == (len(wb), len(msg))
        assert b.mr.read(len(msg), (last.wr_id % 400) * size) == msg
    finally:
        a.close()
        b.close()


def da_counter(side, name):
    return side.ctx.get_counters().get(name, 0)


def test_uc_refuses_read_and_atomics(two_daemons):
    da, db = two_daemons
    a, b = uc_pair(da, db, e.IBV_MTU_1024)
    try:
        for opcode in (e.IBV_WR_RDMA_READ, e.IBV_WR_ATOMIC_FETCH_AND_ADD,
                       e.IBV_WR_ATOMIC_CMP_AND_SWP):
            w = send_wr(1, opcode, SGE(a.mr.buf, 8, a.mr.lkey), rkey=b.mr.rkey,
                        raddr=b.mr.buf)
            with pytest.raises(RnicError) as ei:           # as rxe: refused at post
                a.qp.post_send(w)
            assert ei.value.error_code == errno.EINVAL and "UC" in str(ei.value)
        # QPEx: a send op UC does not carry is EOPNOTSUPP at creation, as rxe's provider
        cq = CQ(a.ctx, 16, None, None, 0)
        for ops in (e.IBV_QP_EX_WITH_RDMA_READ, e.IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD):
            qia = QPInitAttrEx(cap=QPCap(4, 4, 1, 1), qp_type=e.IBV_QPT_UC, scq=cq, rcq=cq,
                               pd=a.pd, send_ops_flags=ops | e.IBV_QP_EX_WITH_SEND,
                               comp_mask=e.IBV_QP_INIT_ATTR_PD
                               | e.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS)
            with pytest.raises(RnicError) as ei:
                QPEx(a.ctx, qia)
            assert ei.value.error_code == errno.EOPNOTSUPP
        # a UC QPEx with SEND and WRITE works end to end
        qia = QPInitAttrEx(cap=QPCap(4, 4, 1, 1), qp_type=e.IBV_QPT_UC, scq=cq, rcq=cq,
                           pd=a.pd, send_ops_flags=e.IBV_QP_EX_WITH_SEND
                           | e.IBV_QP_EX_WITH_RDMA_WRITE,
                           comp_mask=e.IBV_QP_INIT_ATTR_PD | e.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS)
        qx = QPEx(a.ctx, qia, QPAttr(port_num=1))
        assert qx.qp_state == e.IBV_QPS_INIT
    finally:
        a.close()
        b.close()


def test_uc_modify_refuses_rc_only_attributes(two_daemons):
    da, _db = two_daemons
    a = Side(da, qp_type=e.IBV_QPT_UC)
    try:
        attr = QPAttr(port_num=1)
        attr.qp_access_flags = UC_ACCESS
        a.qp.to_init(attr)
        attr.qp_state = e.IBV_QPS_RTR
        attr.dest_qp_num, attr.rq_psn, attr.max_dest_rd_atomic = 0x20, 0, 4
        from rnic.addr import AHAttr, GlobalRoute
        attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=GlobalRoute(dgid=a.gid,
                                                                      sgid_index=0))
        mask = (e.IBV_QP_STATE | e.IBV_QP_AV | e.IBV_QP_PATH_MTU | e.IBV_QP_DEST_QPN
                | e.IBV_QP_RQ_PSN)
        with pytest.raises(RnicError) as ei:
            a.qp.modify(attr, mask | e.IBV_QP_MAX_DEST_RD_ATOMIC)
        assert ei.value.error_code == errno.EINVAL
        assert "IBV_QP_MAX_DEST_RD_ATOMIC" in str(ei.value)
        a.qp.modify(attr, mask)
        assert a.qp.qp_state == e.IBV_QPS_RTR
    finally:
        a.close()

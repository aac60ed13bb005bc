"""Parent domains (ibv_alloc_parent_domain): a PD for every verb, whose queues live in memory
the application's allocators hand out; RC traffic between two daemons runs through queues
placed there, and every buffer goes back to the free callback when its queue goes."""
import ctypes
import errno

import pytest
import rnic.enums as e
import rnic.mem_alloc as mem
from rc_pair import Side, connect, poll_n
from rnic.cq import CQEX, CqInitAttrEx
from rnic.errors import RnicError
from rnic.pd import RES_TYPE, ParentDomain, ParentDomainContext, ParentDomainInitAttr
from rnic.qp import QP, QPCap, QPInitAttr
from rnic.wr import SGE, RecvWR, SendWR

from rnicd.wire.rings import RING_MAGIC, RingKind


class Allocator:
    """posix_memalign-backed allocators that remember what they handed out."""

    def __init__(self, default=False):
        self.default, self.live, self.calls = default, {}, []

    def alloc(self, pd, context, size, alignment, resource_type):
        self.calls.append((size, alignment, resource_type))
        if self.default:
            return e._IBV_ALLOCATOR_USE_DEFAULT
        p = mem.posix_memalign(size, alignment)
        self.live[p] = resource_type
        return p

    def free(self, pd, context, ptr, resource_type):
        assert self.live.pop(ptr) == resource_type
        mem.free(ptr)


def magic_at(addr: int) -> int:
    return ctypes.c_uint32.from_address(addr).value


def test_rc_traffic_through_queues_in_allocator_memory(two_daemons):
    da, db = two_daemons
    a, b = Side(da), Side(db)
    al = Allocator()
    try:
        pdom = ParentDomain(a.ctx, ParentDomainInitAttr(
            pd=a.pd, pd_context=ParentDomainContext(a.pd, al.alloc, al.free)))
        cq = CQEX(a.ctx, CqInitAttrEx(cqe=64, parent_domain=pdom,
                                      comp_mask=e.IBV_CQ_INIT_ATTR_MASK_PD))
        qp = QP(pdom, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                 cap=QPCap(max_send_wr=16, max_recv_wr=16)))
        # one buffer per queue, page-aligned, and each holds its ring (the header's magic)
        assert sorted(t for _s, _al, t in al.calls) == sorted(
            RES_TYPE[k] for k in (RingKind.CQ, RingKind.SQ, RingKind.RQ))
        assert all(al_ == 4096 and s % 4096 == 0 for s, al_, _t in al.calls)
        assert all(magic_at(p) == RING_MAGIC for p in al.live)
        a.qp, a.cq = qp, cq
        connect(a, b)
        qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(a.mr.buf, 100, a.mr.lkey)]))
        b.mr.write(b"to the parent domain", 20, 0)
        b.qp.post_send(SendWR(wr_id=2, opcode=e.IBV_WR_SEND, num_sge=1,
                              sg=[SGE(b.mr.buf, 20, b.mr.lkey)]))
        assert poll_n(cq, 1)[0].status == e.IBV_WC_SUCCESS
        assert a.mr.read(20, 0) == b"to the parent domain"
        a.mr.write(b"back", 4, 200)
        wr = SendWR(wr_id=3, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                    sg=[SGE(a.mr.buf + 200, 4, a.mr.lkey)], send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(b.mr.rkey, b.mr.buf + 300)
        qp.post_send(wr)
        assert poll_n(cq, 1)[0].status == e.IBV_WC_SUCCESS
        assert b.mr.read(4, 300) == b"back"
        qp.close()
        cq.close()
        assert al.live == {}                 # every buffer went back to free_func
        pdom.close()
        assert not a.pd.closed               # the parent domain's PD is the caller's
    finally:
        a.close()
        b.close()


def test_default_allocator_and_bad_allocators(rnicd):
    d = rnicd("pdom")
    a = Side(d)
    try:
        dflt = Allocator(default=True)
        pdom = ParentDomain(a.ctx, ParentDomainInitAttr(
            pd=a.pd, pd_context=ParentDomainContext(a.pd, dflt.alloc, dflt.free)))
        qp = QP(pdom, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=a.cq, rcq=a.cq,
                                 cap=QPCap(max_send_wr=4, max_recv_wr=4)))
        assert len(dflt.calls) == 2 and dflt.live == {}       # USE_DEFAULT: mapped as usual
        qp.close()

        def unaligned(pd, context, size, alignment, resource_type):
            return mem.posix_memalign(size + 8, 8) + 8 if size % 2 == 0 else 0
        bad = ParentDomain(a.ctx, ParentDomainInitAttr(
            pd=a.pd, pd_context=ParentDomainContext(a.pd, unaligned, lambda *x: None)))
        with pytest.raises(RnicError) as ei:
            QP(bad, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=a.cq, rcq=a.cq,
                               cap=QPCap(max_send_wr=4, max_recv_wr=4)))
        assert ei.value.code == errno.EINVAL and "aligned" in ei.value.msg
        assert a.ctx.get_objects()["qps"] == 1                 # a's own QP only
        with pytest.raises(RnicError) as ei:
            ParentDomain(a.ctx, ParentDomainInitAttr(
                pd=a.pd, pd_context=ParentDomainContext(a.pd, dflt.alloc, None)))
        assert ei.value.code == errno.EINVAL
    finally:
        a.close()

"""Shared receive queues: ``SRQ(pd, SrqInitAttr(SrqAttr(...)))``, as pyverbs.srq, and XRC
SRQs: ``SRQ(ctx, SrqInitAttrEx)`` with srq_type IBV_SRQT_XRC, pd, xrcd and cq (Annex A14)."""
import errno
import os

from rnicd.wire.abi import SRQAttrMask, SRQType
from rnicd.wire.rings import RingKind

from . import _post
from ._rings import Ring
from ._unsupported import not_offered, verb_classes
from .base import RnicCM
from .device import need_int
from .errors import RnicError, einval
from .qp import _copy_wr
from .wr import wr_chain


class SrqAttr:
    """struct ibv_srq_attr."""

    def __init__(self, max_wr=100, max_sge=1, srq_limit=0):
        self.max_wr = max_wr
        self.max_sge = max_sge
        self.srq_limit = srq_limit

    def __repr__(self) -> str:
        return (f"SrqAttr(max_wr={self.max_wr}, max_sge={self.max_sge}, "
                f"srq_limit={self.srq_limit})")


class SrqInitAttr:
    """struct ibv_srq_init_attr: an SrqAttr (defaults when None)."""

    def __init__(self, attr: SrqAttr = None):
        self.attr = attr if attr is not None else SrqAttr()

    max_wr = property(lambda self: self.attr.max_wr)
    max_sge = property(lambda self: self.attr.max_sge)
    srq_limit = property(lambda self: self.attr.srq_limit)


class SrqInitAttrEx(SrqInitAttr):
    """struct ibv_srq_init_attr_ex: ``SrqInitAttrEx(max_wr, max_sge, srq_limit)`` plus
    comp_mask, srq_type, pd, xrcd, cq, max_num_tags, max_ops. Basic and XRC SRQs are offered
    (an XRC SRQ needs pd, xrcd and cq); tag-matching SRQs answer EOPNOTSUPP."""

    def __init__(self, max_wr=100, max_sge=1, srq_limit=0):
        super().__init__(SrqAttr(max_wr, max_sge, srq_limit))
        self.comp_mask = 0
        self.srq_type = 0   # IBV_SRQT_BASIC
        self.pd = None
        self.xrcd = None
        self.cq = None
        self.max_num_tags = 0
        self.max_ops = 0


verb_classes(globals(), "tag matching (OpsWr)", "OpsWr")


class SRQ(RnicCM):
    """A shared receive queue. ``srq_limit`` arms IBV_EVENT_SRQ_LIMIT_REACHED."""

    _destroy_verb = "destroy_srq"
    _handle_key = "srq"

    def __init__(self, pd, srq_init_attr: SrqInitAttr = None):
        xrcd = cq = None
        if isinstance(srq_init_attr, SrqInitAttrEx):
            if srq_init_attr.srq_type == SRQType.IBV_SRQT_TM:
                raise not_offered("tag-matching SRQs (IBV_SRQT_TM)")
            if srq_init_attr.srq_type == SRQType.IBV_SRQT_XRC:
                xrcd, cq = srq_init_attr.xrcd, srq_init_attr.cq
                if xrcd is None or cq is None or srq_init_attr.pd is None:
                    raise einval("Failed to create SRQ: an XRC SRQ (IBV_SRQT_XRC) needs pd, "
                                 "xrcd and cq in SrqInitAttrEx")
                xrcd._check_open()
                cq._check_open()
            elif srq_init_attr.srq_type != SRQType.IBV_SRQT_BASIC:
                raise einval(f"Failed to create SRQ: srq_type {srq_init_attr.srq_type!r} is "
                             "no enum ibv_srq_type")
            if srq_init_attr.pd is not None:
                pd = srq_init_attr.pd
        if not hasattr(pd, "ctx") or pd.ctx is pd:
            raise einval("SRQ: a PD is needed (as the creator or in SrqInitAttrEx.pd)")
        pd._check_open()
        if srq_init_attr is None:
            srq_init_attr = SrqInitAttr()
        if isinstance(srq_init_attr, SrqAttr):
            srq_init_attr = SrqInitAttr(srq_init_attr)
        a = srq_init_attr.attr
        ctx = pd.ctx
        args = {"pd": pd.handle, "max_wr": a.max_wr, "max_sge": a.max_sge,
                "srq_limit": a.srq_limit}
        if xrcd is not None:
            args.update(srq_type=int(SRQType.IBV_SRQT_XRC), xrcd=xrcd.handle, cq=cq.handle)
        r, fds = ctx._call("create_srq", args, nfds=1)
        self._ring = None
        try:
            self.handle = need_int(r, "srq", "create_srq")
        except RnicError:
            os.close(fds[0])
            raise
        try:
            self.max_wr = need_int(r, "max_wr", "create_srq")
            self.max_sge = need_int(r, "max_sge", "create_srq")
            self._ring = Ring(fds[0], r.get("size"), RingKind.SRQ, "create_srq",
                              place=getattr(pd, "_placement", None))
            self._ring.limit = self.max_wr or self._ring.num_entries
        except BaseException:
            ctx._destroy("destroy_srq", {"srq": self.handle})
            raise
        self.srq_limit = a.srq_limit
        self.srq_num = r.get("srq_num") if xrcd is not None else None
        self.context, self.pd, self.xrcd, self.cq = ctx, pd, xrcd, cq
        self._init_cm(ctx)
        for parent in (pd, xrcd, cq):
            if parent is not None:
                parent.add_ref(self)
        ctx._register("srq", self.handle, self)

    def post_recv(self, wr, bad_wr=None) -> None:
        """Post a RecvWR (and its ``next_wr`` chain), or a list of them."""
        self._check_open()
        try:
            _post.post_recv(self._ring, self.context, wr_chain(wr), self.max_sge,
                            "SRQ.post_recv")
        except RnicError as exc:
            _copy_wr(bad_wr, getattr(exc, "bad_wr", None))
            raise

    def get_srq_num(self) -> int:
        """ibv_get_srq_num: the number an XRC requester names in its WRs (remote_srqn);
        only XRC SRQs have one (a basic SRQ: EOPNOTSUPP, as libibverbs answers)."""
        self._check_open()
        if self.srq_num is None:
            raise RnicError(errno.EOPNOTSUPP, "Failed to retrieve SRQ number: only an XRC SRQ "
                            "(IBV_SRQT_XRC) has one")
        return self.srq_num

    def modify(self, attr: SrqAttr, attr_mask: int) -> None:
        """ibv_modify_srq: IBV_SRQ_LIMIT re-arms the limit event. IBV_SRQ_MAX_WR (resize)
        needs a new ring, which the control protocol does not hand out yet."""
        self._check_open()
        attr_mask = int(attr_mask)
        if attr_mask & SRQAttrMask.IBV_SRQ_MAX_WR:
            raise RnicError(errno.EOPNOTSUPP, "SRQ.modify: resizing an SRQ (IBV_SRQ_MAX_WR) is not "
                            "supported by rnicd; create a larger SRQ")
        if attr_mask & ~int(SRQAttrMask.IBV_SRQ_MAX_WR | SRQAttrMask.IBV_SRQ_LIMIT):
            raise einval(f"SRQ.modify: unknown attr_mask bits {attr_mask:#x}")
        self.context._call("modify_srq", {"srq": self.handle, "attr_mask": attr_mask,
                                          "max_wr": attr.max_wr, "srq_limit": attr.srq_limit})
        if attr_mask & SRQAttrMask.IBV_SRQ_LIMIT:
            self.srq_limit = attr.srq_limit

    def query(self) -> SrqAttr:
        self._check_open()
        r, _ = self.context._call("query_srq", {"srq": self.handle})
        return SrqAttr(max_wr=r.get("max_wr", self.max_wr),
                       max_sge=r.get("max_sge", self.max_sge), srq_limit=r.get("srq_limit", 0))

    def _release_local(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.release()
            self._ring = None

    def __repr__(self) -> str:
        return f"SRQ(handle={getattr(self, 'handle', None)}, max_wr={getattr(self, 'max_wr', 0)})"

"""post_send / post_recv: check a work request completely, then write its WQE into the ring.

A WQE is written only after its WR passed every check, so the daemon never sees half a WQE.
On the first bad WR of a chain the WRs before it stay posted (they are published and the
doorbell rung) and RnicError is raised with ``.bad_wr`` set, as ibv_post_send does. The
daemon re-checks everything it reads from a ring: these checks exist to give the
application an immediate, precise error, not to protect the daemon.

This is the Python client's data path, so it is written for speed: plain ints instead of
enum arithmetic, the consumer index re-read only when the ring looks full, and each WQE
written with one ``struct.pack_into`` (rnicd.wire.rings) instead of a store per field. A
work request of rnic.wr remembers its last successful check (``_checked``): posted again
unchanged, against the same queue and the same MRs, it is not checked again (rnic.wr says
what forgets it). Sends through an AH or a memory window are checked every time: those
objects can be closed without the MR table noticing.
"""
from rnicd.wire.abi import QPType, SendFlags, WROpcode
from rnicd.wire.rings import RECV_WQE, RECV_WQE_HDR, SEND_WQE, SEND_WQE_HDR, SGE

from . import wr as _wr
from ._rings import U32, uint
from .errors import RnicError, einval, enomem

W = WROpcode
_SENDS = frozenset({int(W.IBV_WR_SEND), int(W.IBV_WR_SEND_WITH_IMM)})
_INV = frozenset({int(W.IBV_WR_SEND_WITH_INV), int(W.IBV_WR_LOCAL_INV)})   # imm: the rkey
_MW_OPS = frozenset({int(W.IBV_WR_BIND_MW), int(W.IBV_WR_LOCAL_INV)})      # local: no data
_WRITES = frozenset({int(W.IBV_WR_RDMA_WRITE), int(W.IBV_WR_RDMA_WRITE_WITH_IMM)})
_ATOMICS = frozenset({int(W.IBV_WR_ATOMIC_CMP_AND_SWP), int(W.IBV_WR_ATOMIC_FETCH_AND_ADD)})
_RDMA = _WRITES | {int(W.IBV_WR_RDMA_READ)}
_REMOTE = _RDMA | _ATOMICS                      # remote_addr and rkey
_IMM_OR_INV = frozenset({int(W.IBV_WR_SEND_WITH_IMM), int(W.IBV_WR_RDMA_WRITE_WITH_IMM)}) | _INV
_INLINE_OK = _SENDS | _WRITES | {int(W.IBV_WR_SEND_WITH_INV)}
_BIND = int(W.IBV_WR_BIND_MW)
# Operations each transport service supports (IBTA vol 1 ch. 9/10: UD carries sends only;
# UC adds RDMA writes; RC adds RDMA reads, atomics, memory-window binds and invalidation,
# 10.6.7, which rnicd offers on RC QPs).
_UD, _XRC_SEND = int(QPType.IBV_QPT_UD), int(QPType.IBV_QPT_XRC_SEND)
OPS_BY_QP_TYPE = {
    int(QPType.IBV_QPT_RC): _SENDS | _RDMA | _ATOMICS | _MW_OPS | {int(W.IBV_WR_SEND_WITH_INV)},
    int(QPType.IBV_QPT_UC): _SENDS | _WRITES,
    _UD: _SENDS,
    _XRC_SEND: _SENDS | _RDMA | _ATOMICS,        # RC's (IBTA Annex A14)
}
_INLINE = int(SendFlags.IBV_SEND_INLINE)
_FLAGS_OK = int(SendFlags.IBV_SEND_FENCE | SendFlags.IBV_SEND_SIGNALED
                | SendFlags.IBV_SEND_SOLICITED | SendFlags.IBV_SEND_INLINE)
_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1
_pack_wqe, _pack_sge, _pack_rwqe = SEND_WQE.pack_into, SGE.pack_into, RECV_WQE.pack_into
_SGE_SIZE = SGE.size


def _opname(op) -> str:
    try:
        return W(op).name
    except ValueError:
        return str(op)


def _u(v, mask: int, bits: int, what: str) -> int:
    """v if it is an int in 0..mask (the common case in two comparisons), else the error."""
    if v.__class__ is int and 0 <= v <= mask:
        return v
    # an IntEnum/IntFlag passes here, as a plain int: enum arithmetic later costs µs a post
    return int(uint(v, bits, what))


def check_sges(ctx, sges, max_sge: int, what: str, need_lkey: bool = True):
    """Each SGE's lkey must be an open MR of this context and [addr, addr+length) inside it.
    Returns [(addr, length, lkey, mr)]. With need_lkey=False (inline data, copied by the
    client) any open MR of the context that holds the range will do, as providers ignore
    the lkey there."""
    if len(sges) > max_sge:
        raise einval(f"{what}: {len(sges)} SGEs, but the queue takes at most {max_sge}")
    out = []
    mrs = ctx._mrs
    for i, sge in enumerate(sges):
        try:
            addr, length, lkey = sge.addr, sge.length, sge.lkey
        except AttributeError:
            raise einval(f"{what}: sg[{i}] is not an SGE: {sge!r}") from None
        addr = _u(addr, _M64, 64, f"{what}: sg[{i}].addr")
        length = _u(length, _M32, 32, f"{what}: sg[{i}].length")
        lkey = _u(lkey, _M32, 32, f"{what}: sg[{i}].lkey")
        mr = mrs.get(lkey)
        if mr is not None and mr.closed:
            mr = None
        if not need_lkey and (mr is None or not mr.buf <= addr <= addr + length
                              <= mr.buf + mr.length):
            mr = ctx._mr_by_addr(addr, length)   # inline data: the lkey is not used
        if mr is None:
            raise einval(f"{what}: sg[{i}].lkey {lkey:#x} is not the lkey of an open MR of "
                         "this context")
        if addr < mr.buf or addr + length > mr.buf + mr.length:
            raise einval(f"{what}: sg[{i}] [{addr:#x}, +{length}) lies outside its MR "
                         f"[{mr.buf:#x}, +{mr.length})")
        out.append((addr, length, lkey, mr))
    return out


def _room(ring, prod: int, cons: int, limit: int) -> int:
    """cons, re-read if the ring looks full at prod; raises if the indices are impossible."""
    if (prod - cons) & U32 < limit:
        return cons
    return (prod - ring.used(prod)) & U32


def _put_sges(mm, off: int, sges) -> None:
    """The checked SGEs (check_sges) as struct rnic_sge from off on."""
    for addr, length, lkey, _mr in sges:
        _pack_sge(mm, off, addr, length, lkey)
        off += _SGE_SIZE


def _recall(wr, queue, stamp: tuple):
    """What _remember kept for wr on this queue, if nothing it depends on has changed since:
    stamp is (the context's MR epoch, the SGE epoch). Else None."""
    c = getattr(wr, "_checked", None)
    if c is not None and c[0] is queue and c[1] == stamp and c[2] == getattr(wr, "sg", ()):
        return c[3]
    return None


def _remember(wr, queue, stamp: tuple, sg, value) -> None:
    """Keep a successful check on a work request of rnic.wr (whose setters forget it); its
    SG list as it was before the check is copied, so that a change in place is seen too."""
    if isinstance(wr, _wr._SGListMixin):
        wr.__dict__["_checked"] = (queue, stamp, sg[:] if sg.__class__ is list else sg, value)


def post_recv(ring, ctx, wrs, max_sge: int, what: str) -> None:
    """Write receive WQEs for ``wrs`` and publish them. Receives need no doorbell, unless the
    queue is in error (its header says so): the daemon then flushes them (IBTA 10.8.3)."""
    rv, mm = ring.rv, ring.mm
    prod = rv.load_prod()
    cons = rv.load_cons()
    limit = min(ring.num_entries, ring.limit)
    max_sge = min(max_sge, ring.max_sge)
    posted, err = 0, None
    stamp = (ctx._mrs.epoch, _wr.sge_epoch)
    for wr in wrs:
        try:
            kept = _recall(wr, ring, stamp)
            if kept is not None:
                wr_id, sges = kept
            else:
                sg = getattr(wr, "sg", ())
                wr_id = _u(getattr(wr, "wr_id", None), _M64, 64, f"{what}: wr_id")
                sges = check_sges(ctx, sg if sg.__class__ is list else list(sg), max_sge, what)
                _remember(wr, ring, stamp, sg, (wr_id, sges))
            cons = _room(ring, prod + posted, cons, limit)
            if (prod + posted - cons) & U32 >= limit:
                raise enomem(f"{what}: receive queue full (max_wr={limit})")
        except RnicError as exc:
            exc.bad_wr, err = wr, exc
            break
        off = rv.offset(prod + posted)
        _pack_rwqe(mm, off, wr_id, len(sges), 0)
        _put_sges(mm, off + RECV_WQE_HDR, sges)
        posted += 1
    if posted:
        rv.store_prod((prod + posted) & U32)
        if ring.error():
            ctx._ring_doorbell()
    if err is not None:
        raise err


def _prepare_send(qp, wr, qpt: int, ops) -> tuple:
    """Check one send WR against the QP; returns the WQE's header fields (SEND_WQE order
    from remote_addr on, wr_id first) and its payload: ("sg", sges), ("inline", bytes) or
    ("bind", None); inline data is read when the WQE is written, so the checked SGEs are
    returned: ("inline", sges)."""
    what = "post_send"
    op = getattr(wr, "opcode", None)
    if op.__class__ is bool or not isinstance(op, int) or op not in ops:
        allowed = ", ".join(sorted(_opname(o) for o in ops))
        raise einval(f"{what}: opcode {_opname(op)} is not valid on a "
                     f"{QPType(qpt).name} QP; allowed: {allowed}")
    flags = _u(getattr(wr, "send_flags", 0), _M32, 32, f"{what}: send_flags")
    if flags & ~_FLAGS_OK:
        raise einval(f"{what}: send_flags {flags:#x} has bits rnicd does not know "
                     f"({flags & ~_FLAGS_OK:#x}); allowed: IBV_SEND_FENCE|SIGNALED|SOLICITED|"
                     "INLINE")
    wr_id = _u(getattr(wr, "wr_id", None), _M64, 64, f"{what}: wr_id")
    imm = _u(wr.imm_data, _M32, 32, f"{what}: imm_data") if op in _IMM_OR_INV else 0
    raddr = rkey = cmp_add = swap = ah = rqpn = rqkey = 0
    if op in _REMOTE:
        raddr = _u(wr.remote_addr, _M64, 64, f"{what}: remote_addr")
        rkey = _u(wr.rkey, _M32, 32, f"{what}: rkey")
        if op in _ATOMICS:
            cmp_add = _u(wr.compare_add, _M64, 64, f"{what}: compare_add")
            swap = _u(wr.swap, _M64, 64, f"{what}: swap")
            if raddr % 8:
                raise einval(f"{what}: an atomic's remote_addr must be 8-byte aligned, got "
                             f"{raddr:#x}")
            sg = list(wr.sg)
            if len(sg) != 1 or getattr(sg[0], "length", None) != 8:
                raise einval(f"{what}: an atomic takes one SGE of 8 bytes for the original "
                             "value")
    if qpt == _UD:
        if wr.ah is None:
            raise einval(f"{what}: a UD send needs an address handle: wr.set_wr_ud(ah, "
                         "remote_qpn, remote_qkey)")
        if getattr(wr.ah, "closed", False) or getattr(getattr(wr.ah, "pd", None), "ctx",
                                                      qp.context) is not qp.context:
            raise einval(f"{what}: the AH is closed or belongs to another context")
        ah = uint(getattr(wr.ah, "handle", wr.ah), 32, f"{what}: ah")
        rqpn = uint(wr.remote_qpn, 24, f"{what}: remote_qpn")
        rqkey = _u(wr.remote_qkey, _M32, 32, f"{what}: remote_qkey")
    elif qpt == _XRC_SEND:                 # the XRCETH's SRQ (rnic_abi.h remote_srqn)
        rqpn = uint(getattr(wr, "remote_srqn", 0), 24, f"{what}: remote_srqn (XRC SRQ "
                    "number, set_qp_type_xrc)")
    sges = getattr(wr, "sg", ())
    if sges.__class__ is not list:
        sges = list(sges)
    if op in _MW_OPS:
        if sges or flags & _INLINE:
            raise einval(f"{what}: {_opname(op)} carries no data (no SGEs, not inline)")
        if op == _BIND:
            mw, lkey, raddr, length, access = _bind_fields(qp, wr, what)
            rkey = _u(wr.rkey, _M32, 32, f"{what}: rkey (the window's new rkey)")
            # bind_length, bind_mw | bind_lkey << 32 and bind_access share their places
            return (wr_id, raddr, length, mw | lkey << 32, op, flags, imm, rkey, access, rqpn,
                    rqkey, "bind", None)
        return (wr_id, raddr, cmp_add, swap, op, flags, imm, rkey, ah, rqpn, rqkey, "sg", [])
    if flags & _INLINE:
        if op not in _INLINE_OK:
            raise einval(f"{what}: IBV_SEND_INLINE is for sends and RDMA writes, not "
                         f"{_opname(op)}")
        pairs = check_sges(qp.context, sges, len(sges), what, need_lkey=False)
        total = sum(p[1] for p in pairs)
        cap = min(qp.cap.max_inline_data, qp._sq.max_inline, qp._sq.entry_size - SEND_WQE_HDR)
        if total > cap:
            raise einval(f"{what}: {total} bytes of inline data, but the QP takes at most "
                         f"{cap} (max_inline_data)")
        return (wr_id, raddr, cmp_add, swap, op, flags, imm, rkey, ah, rqpn, rqkey, "inline",
                pairs)
    max_sge = min(qp.cap.max_send_sge, qp._sq.max_sge)
    if len(sges) > max_sge:
        raise einval(f"{what}: {len(sges)} SGEs, but the QP takes at most {max_sge} "
                     "(max_send_sge)")
    return (wr_id, raddr, cmp_add, swap, op, flags, imm, rkey, ah, rqpn, rqkey, "sg",
            check_sges(qp.context, sges, max_sge, what))


def _bind_fields(qp, wr, what: str) -> tuple:
    """A BIND_MW WR's window and bind_info, as the WQE's bind_* fields (rnic_abi.h):
    (mw handle, lkey of the MR or 0, addr, length, mw_access_flags)."""
    mw, info = getattr(wr, "bind_mw", None), getattr(wr, "bind_info", None)
    if mw is None or info is None:
        raise einval(f"{what}: IBV_WR_BIND_MW needs wr.set_bind_wr(mw, bind_info)")
    if getattr(mw, "closed", True) or getattr(getattr(mw, "pd", None), "ctx", None) \
            is not qp.context:
        raise einval(f"{what}: the MW is closed or belongs to another context")
    mr = getattr(info, "mr", None)
    if mr is not None and (getattr(mr, "closed", True) or mr.pd is not mw.pd):
        raise einval(f"{what}: bind_info.mr is closed or not in the MW's PD")
    addr = uint(info.addr or 0, 64, f"{what}: bind_info.addr")
    length = uint(info.length or 0, 64, f"{what}: bind_info.length")
    access = uint(info.mw_access_flags or 0, 32, f"{what}: bind_info.mw_access_flags")
    return (mw.handle, mr.lkey if mr is not None else 0, addr, length, access)


def _send_wqe(fields) -> tuple:
    """A checked send (_prepare_send) as its WQE's bytes (header, then SGEs) and, for
    inline data, the SGEs to copy after the header at each post: (wqe, inline_sges)."""
    (wr_id, raddr, cmp_add, swap, op, flags, imm, rkey, ah, rqpn, rqkey, kind, body) = fields
    nsge = len(body) if kind == "sg" else 0         # a bind has neither: its fields are in
    ninline = sum(p[1] for p in body) if kind == "inline" else 0   # the places they share
    wqe = bytearray(SEND_WQE_HDR + nsge * _SGE_SIZE)
    _pack_wqe(wqe, 0, wr_id, raddr, cmp_add, swap, op, 0, nsge, flags, imm, rkey, ninline, ah,
              rqpn, rqkey)
    if nsge:
        _put_sges(wqe, SEND_WQE_HDR, body)
    return bytes(wqe), body if ninline else ()


def post_send(qp, wrs) -> None:
    """Check and write send WQEs, publish prod once, ring the doorbell once."""
    ring = qp._sq
    rv, mm = ring.rv, ring.mm
    prod = rv.load_prod()
    cons = rv.load_cons()
    limit = min(ring.num_entries, ring.limit)
    qpt = int(qp.qp_type)
    ops = OPS_BY_QP_TYPE[qpt]
    posted, err = 0, None
    stamp = (qp.context._mrs.epoch, _wr.sge_epoch)
    for wr in wrs:
        try:
            kept = _recall(wr, qp, stamp)
            if kept is not None:
                wqe, inline = kept
            else:
                sg = getattr(wr, "sg", ())
                fields = _prepare_send(qp, wr, qpt, ops)
                wqe, inline = _send_wqe(fields)
                if qpt != _UD and fields[4] not in _MW_OPS:
                    _remember(wr, qp, stamp, sg, (wqe, inline))
            cons = _room(ring, prod + posted, cons, limit)
            if (prod + posted - cons) & U32 >= limit:
                raise enomem(f"post_send: send queue full (max_send_wr={limit})")
        except RnicError as exc:
            exc.bad_wr, err = wr, exc
            break
        off = rv.offset(prod + posted)
        end = off + len(wqe)
        mm[off:end] = wqe
        for a, n, _k, mr in inline:      # the data as it is now, right after the header
            a -= mr.buf
            mm[end:end + n] = mr.mmap[a:a + n]
            end += n
        posted += 1
    if posted:
        rv.store_prod((prod + posted) & U32)
        qp.context._ring_doorbell(ring)
    if err is not None:
        raise err

"""post_send / post_recv: check a work request completely, then write its WQE into the ring.

A WQE is written only after its WR passed every check, so the daemon never sees half a WQE.
On the first bad WR of a chain the WRs before it stay posted (they are published and the
doorbell rung) and RnicError is raised with ``.bad_wr`` set, as ibv_post_send does. The
daemon re-checks everything it reads from a ring: these checks exist to give the
application an immediate, precise error, not to protect the daemon.
"""
from rnicd.wire.abi import QPType, SendFlags, WROpcode
from rnicd.wire.rings import SEND_WQE_HDR

from ._rings import U32, uint
from .errors import RnicError, einval, enomem

W = WROpcode
_SENDS = frozenset({W.IBV_WR_SEND, W.IBV_WR_SEND_WITH_IMM})
_INV = frozenset({W.IBV_WR_SEND_WITH_INV, W.IBV_WR_LOCAL_INV})   # imm_data: invalidate_rkey
_MW_OPS = frozenset({W.IBV_WR_BIND_MW, W.IBV_WR_LOCAL_INV})      # local: no data
_WRITES = frozenset({W.IBV_WR_RDMA_WRITE, W.IBV_WR_RDMA_WRITE_WITH_IMM})
_ATOMICS = frozenset({W.IBV_WR_ATOMIC_CMP_AND_SWP, W.IBV_WR_ATOMIC_FETCH_AND_ADD})
_RDMA = _WRITES | {W.IBV_WR_RDMA_READ}
_IMM = frozenset({W.IBV_WR_SEND_WITH_IMM, W.IBV_WR_RDMA_WRITE_WITH_IMM})
_INLINE_OK = _SENDS | _WRITES | {W.IBV_WR_SEND_WITH_INV}
# Operations each transport service supports (IBTA vol 1 ch. 9/10: UD carries sends only;
# UC adds RDMA writes; RC adds RDMA reads, atomics, memory-window binds and invalidation,
# 10.6.7, which rnicd offers on RC QPs).
OPS_BY_QP_TYPE = {
    QPType.IBV_QPT_RC: _SENDS | _RDMA | _ATOMICS | _MW_OPS | {W.IBV_WR_SEND_WITH_INV},
    QPType.IBV_QPT_UC: _SENDS | _WRITES,
    QPType.IBV_QPT_UD: _SENDS,
    QPType.IBV_QPT_XRC_SEND: _SENDS | _RDMA | _ATOMICS,    # RC's (IBTA Annex A14)
}
_FLAGS_OK = int(SendFlags.IBV_SEND_FENCE | SendFlags.IBV_SEND_SIGNALED
                | SendFlags.IBV_SEND_SOLICITED | SendFlags.IBV_SEND_INLINE)


def _opname(op) -> str:
    try:
        return W(op).name
    except ValueError:
        return str(op)


def check_sges(ctx, sges, max_sge: int, what: str, need_lkey: bool = True):
    """Each SGE's lkey must be an open MR of this context and [addr, addr+length) inside it.
    Returns [(sge, mr)]. With need_lkey=False (inline data, copied by the client) any open
    MR of the context that holds the range will do, as providers ignore the lkey there."""
    if len(sges) > max_sge:
        raise einval(f"{what}: {len(sges)} SGEs, but the queue takes at most {max_sge}")
    out = []
    for i, sge in enumerate(sges):
        if not all(hasattr(sge, a) for a in ("addr", "length", "lkey")):
            raise einval(f"{what}: sg[{i}] is not an SGE: {sge!r}")
        addr = uint(sge.addr, 64, f"{what}: sg[{i}].addr")
        length = uint(sge.length, 32, f"{what}: sg[{i}].length")
        lkey = uint(sge.lkey, 32, f"{what}: sg[{i}].lkey")
        mr = ctx._mr_by_lkey(lkey)
        if not need_lkey and (mr is None or not mr.buf <= addr <= addr + length
                              <= mr.buf + mr.length):
            mr = ctx._mr_by_addr(addr, length)   # inline data: the lkey is not used
        if mr is None:
            raise einval(f"{what}: sg[{i}].lkey {lkey:#x} is not the lkey of an open MR of "
                         "this context")
        if addr < mr.buf or addr + length > mr.buf + mr.length:
            raise einval(f"{what}: sg[{i}] [{addr:#x}, +{length}) lies outside its MR "
                         f"[{mr.buf:#x}, +{mr.length})")
        out.append((sge, mr))
    return out


def post_recv(ring, ctx, wrs, max_sge: int, what: str) -> None:
    """Write receive WQEs for ``wrs`` and publish them. Receives need no doorbell, unless the
    queue is in error (its header says so): the daemon then flushes them (IBTA 10.8.3)."""
    rv = ring.rv
    prod = rv.load_prod()
    limit = min(ring.num_entries, ring.limit)
    max_sge = min(max_sge, ring.max_sge)
    posted, err = 0, None
    for wr in wrs:
        try:
            wr_id = uint(getattr(wr, "wr_id", None), 64, f"{what}: wr_id")
            pairs = check_sges(ctx, list(getattr(wr, "sg", ())), max_sge, what)
            if ring.used(prod + posted) >= limit:
                raise enomem(f"{what}: receive queue full (max_wr={limit})")
        except RnicError as exc:
            exc.bad_wr, err = wr, exc
            break
        w = rv.recv_wqe(prod + posted)
        w.wr_id = wr_id
        w.num_sge = len(pairs)
        w._rsvd0 = 0
        for i, (sge, _mr) in enumerate(pairs):
            s = w.sg[i]
            s.addr, s.length, s.lkey = sge.addr, sge.length, sge.lkey
        posted += 1
    if posted:
        rv.store_prod((prod + posted) & U32)
        if ring.error():
            ctx._ring_doorbell()
    if err is not None:
        raise err


def _prepare_send(qp, wr) -> tuple:
    """Check one send WR against the QP; returns the WQE field values."""
    what = "post_send"
    op = getattr(wr, "opcode", None)
    if isinstance(op, bool) or not isinstance(op, int) or op not in OPS_BY_QP_TYPE[qp.qp_type]:
        allowed = ", ".join(sorted(_opname(o) for o in OPS_BY_QP_TYPE[qp.qp_type]))
        raise einval(f"{what}: opcode {_opname(op)} is not valid on a "
                     f"{QPType(qp.qp_type).name} QP; allowed: {allowed}")
    flags = uint(getattr(wr, "send_flags", 0), 32, f"{what}: send_flags")
    if flags & ~_FLAGS_OK:
        raise einval(f"{what}: send_flags {flags:#x} has bits rnicd does not know "
                     f"({flags & ~_FLAGS_OK:#x}); allowed: IBV_SEND_FENCE|SIGNALED|SOLICITED|"
                     "INLINE")
    wr_id = uint(getattr(wr, "wr_id", None), 64, f"{what}: wr_id")
    imm = uint(wr.imm_data, 32, f"{what}: imm_data") if op in _IMM | _INV else 0
    raddr = rkey = cmp_add = swap = ah = rqpn = rqkey = 0
    if op in _RDMA or op in _ATOMICS:
        raddr = uint(wr.remote_addr, 64, f"{what}: remote_addr")
        rkey = uint(wr.rkey, 32, f"{what}: rkey")
    if op in _ATOMICS:
        cmp_add = uint(wr.compare_add, 64, f"{what}: compare_add")
        swap = uint(wr.swap, 64, f"{what}: swap")
        if raddr % 8:
            raise einval(f"{what}: an atomic's remote_addr must be 8-byte aligned, got "
                         f"{raddr:#x}")
        sg = list(wr.sg)
        if len(sg) != 1 or getattr(sg[0], "length", None) != 8:
            raise einval(f"{what}: an atomic takes one SGE of 8 bytes for the original value")
    if qp.qp_type == QPType.IBV_QPT_UD:
        if wr.ah is None:
            raise einval(f"{what}: a UD send needs an address handle: wr.set_wr_ud(ah, "
                         "remote_qpn, remote_qkey)")
        if getattr(wr.ah, "closed", False) or getattr(getattr(wr.ah, "pd", None), "ctx",
                                                      qp.context) is not qp.context:
            raise einval(f"{what}: the AH is closed or belongs to another context")
        ah = uint(getattr(wr.ah, "handle", wr.ah), 32, f"{what}: ah")
        rqpn = uint(wr.remote_qpn, 24, f"{what}: remote_qpn")
        rqkey = uint(wr.remote_qkey, 32, f"{what}: remote_qkey")
    if qp.qp_type == QPType.IBV_QPT_XRC_SEND:    # the XRCETH's SRQ (rnic_abi.h remote_srqn)
        rqpn = uint(getattr(wr, "remote_srqn", 0), 24, f"{what}: remote_srqn (XRC SRQ number, "
                    "set_qp_type_xrc)")
    sges = list(getattr(wr, "sg", ()))
    if op in _MW_OPS:
        if sges or flags & SendFlags.IBV_SEND_INLINE:
            raise einval(f"{what}: {_opname(op)} carries no data (no SGEs, not inline)")
        payload = ("bind", _bind_fields(qp, wr, what)) if op == W.IBV_WR_BIND_MW else ("sg", [])
        if op == W.IBV_WR_BIND_MW:
            rkey = uint(wr.rkey, 32, f"{what}: rkey (the window's new rkey)")
        return (wr_id, op, flags, imm, raddr, rkey, cmp_add, swap, ah, rqpn, rqkey, payload)
    if flags & SendFlags.IBV_SEND_INLINE:
        if op not in _INLINE_OK:
            raise einval(f"{what}: IBV_SEND_INLINE is for sends and RDMA writes, not "
                         f"{_opname(op)}")
        pairs = check_sges(qp.context, sges, len(sges), what, need_lkey=False)
        total = sum(s.length for s, _ in pairs)
        cap = min(qp.cap.max_inline_data, qp._sq.max_inline, qp._sq.entry_size - SEND_WQE_HDR)
        if total > cap:
            raise einval(f"{what}: {total} bytes of inline data, but the QP takes at most "
                         f"{cap} (max_inline_data)")
        data = b"".join(mr.mmap[s.addr - mr.buf:s.addr - mr.buf + s.length] for s, mr in pairs)
        payload = ("inline", data)
    else:
        max_sge = min(qp.cap.max_send_sge, qp._sq.max_sge)
        if len(sges) > max_sge:
            raise einval(f"{what}: {len(sges)} SGEs, but the QP takes at most {max_sge} "
                         "(max_send_sge)")
        payload = ("sg", check_sges(qp.context, sges, max_sge, what))
    return (wr_id, op, flags, imm, raddr, rkey, cmp_add, swap, ah, rqpn, rqkey, payload)


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


def post_send(qp, wrs) -> None:
    """Check and write send WQEs, publish prod once, ring the doorbell once."""
    ring = qp._sq
    rv, ffi = ring.rv, qp._ffi
    prod = rv.load_prod()
    limit = min(ring.num_entries, ring.limit)
    posted, err = 0, None
    for wr in wrs:
        try:
            (wr_id, op, flags, imm, raddr, rkey, cmp_add, swap, ah, rqpn, rqkey,
             (kind, body)) = _prepare_send(qp, wr)
            if ring.used(prod + posted) >= limit:
                raise enomem(f"post_send: send queue full (max_send_wr={limit})")
        except RnicError as exc:
            exc.bad_wr, err = wr, exc
            break
        w = rv.send_wqe(prod + posted)
        w.wr_id, w.remote_addr, w.compare_add, w.swap = wr_id, raddr, cmp_add, swap
        w.opcode, w._rsvd0, w.send_flags, w.imm_data, w.rkey = op, 0, flags, imm, rkey
        w.ah, w.remote_qpn, w.remote_qkey = ah, rqpn, rqkey
        if kind == "bind":          # after the fields they share a place with
            w.bind_mw, w.bind_lkey, w.remote_addr, w.bind_length, w.bind_access = body
            w.num_sge, w.inline_len = 0, 0
        elif kind == "inline":
            w.num_sge, w.inline_len = 0, len(body)
            if body:
                ffi.memmove(ffi.cast("uint8_t *", w) + SEND_WQE_HDR, body, len(body))
        else:
            w.num_sge, w.inline_len = len(body), 0
            for i, (sge, _mr) in enumerate(body):
                s = w.sg[i]
                s.addr, s.length, s.lkey = sge.addr, sge.length, sge.lkey
        posted += 1
    if posted:
        rv.store_prod((prod + posted) & U32)
        qp.context._ring_doorbell(ring)
    if err is not None:
        raise err

"""Memory windows (IBTA 10.6.7): type 1, bound with the Bind MW verb (ibv_bind_mw posts a
BIND_MW work request), and type 2B, bound with a BIND_MW work request to the QP that posted
it; a type 2 window is invalidated by LOCAL_INV or by the peer's SEND with Invalidate (IETH,
9.3.9), a type 1 window by binding it again with length 0.

A window is an entry of the device's key table like an MR (resources.KeyTable): its rkey
indexes the same table and its struct rnic_dp_mr holds the window's own range, access and PD
and, type 2B, its QP, so the one remote-access check (rnic_dp_mr_check, called by the data plane
and by core/roce/responder.py) decides for MRs and windows alike. Binding and invalidation run
here when the requester fetches the work request (they are rare); it completes in SQ order
like any other (IBTA 10.8.3), and a failed one completes in error and fails the QP.
"""
from __future__ import annotations

import logging

from rnicd import native
from rnicd.wire.abi import Access, WCStatus, WROpcode

log = logging.getLogger("rnicd.mw")
ffi, lib = native.ffi, native.lib

TYPE_1, TYPE_2 = 1, 2                      # enum ibv_mw_type
KEY_MW, KEY_INVALID = lib.RNIC_DP_KEY_MW, lib.RNIC_DP_KEY_INVALID
REMOTE = Access.IBV_ACCESS_REMOTE_READ | Access.IBV_ACCESS_REMOTE_WRITE \
    | Access.IBV_ACCESS_REMOTE_ATOMIC
# mw_access_flags a bind may carry: the remote rights and ZERO_BASED; LOCAL_WRITE has no
# meaning for a window (nothing local goes through an rkey) and is ignored, as rxe does
BIND_ACCESS = REMOTE | Access.IBV_ACCESS_ZERO_BASED | Access.IBV_ACCESS_LOCAL_WRITE
WRITABLE = Access.IBV_ACCESS_REMOTE_WRITE | Access.IBV_ACCESS_REMOTE_ATOMIC


class MW:
    """One window. ``lkey`` is None: a window's key is never an lkey (KeyTable.by_lkey)."""

    __slots__ = ("handle", "owner", "pd", "type", "rkey", "lkey", "dp", "mr", "qp")

    def __init__(self, handle: int, owner, pd, mw_type: int, rkey: int):
        self.handle = handle
        self.owner = owner
        self.pd = pd
        self.type = mw_type
        self.rkey = rkey
        self.lkey = None
        self.mr = None          # the MR it is bound to, None while not bound
        self.qp = None          # type 2B: the QP it is bound to
        self.dp = native.shared_new("struct rnic_dp_mr *", {
            "base": ffi.NULL, "pd": pd.uid, "rkey": rkey, "flags": KEY_MW | KEY_INVALID})

    @property
    def bound(self) -> bool:
        return not self.dp.flags & KEY_INVALID

    def _unbind(self):
        self.mr = self.qp = None
        d = self.dp
        d.flags, d.base, d.iova, d.length, d.access, d.qpn = KEY_MW | KEY_INVALID, \
            ffi.NULL, 0, 0, 0, 0


def alloc(device, handle: int, owner, pd, mw_type: int) -> MW:
    """ibv_alloc_mw: an unbound window with a fresh rkey (random key bits, as MRs have)."""
    _lkey, rkey = device.keys.allocate()
    mw = MW(handle, owner, pd, mw_type, rkey)
    device.keys.insert(mw)
    device.windows.add(mw)
    return mw


def dealloc(device, mw: MW):
    """ibv_dealloc_mw: a bound window stops working at once (IBTA 10.6.7.1)."""
    mw._unbind()
    device.keys.remove(mw)
    device.windows.discard(mw)


def windows_on(device, mr) -> int:
    """How many windows are bound to mr (it cannot be deregistered while any is)."""
    return sum(1 for w in device.windows if w.mr is mr)


def forget_qp(device, qp):
    """A QP goes away: the type 2B windows bound to it are invalidated (its QPN may be
    reused; a window must not serve another QP)."""
    for w in device.windows:
        if w.qp is qp:
            w._unbind()


# ---- work requests (core/roce/requester.py fetches them) ---------------------------------
def execute(qp, opcode: int, hdr) -> WCStatus:
    """Run a BIND_MW or LOCAL_INV WQE (its header copy `hdr`, struct rnic_send_wqe) on qp."""
    if opcode == WROpcode.IBV_WR_BIND_MW:
        why = bind(qp, int(hdr.bind_mw), int(hdr.rkey), int(hdr.bind_lkey),
                   int(hdr.remote_addr), int(hdr.bind_length), int(hdr.bind_access))
        status = WCStatus.IBV_WC_MW_BIND_ERR
    else:
        target, why = check_invalidate(qp, int(hdr.invalidate_rkey), remote=False)
        if target is not None:
            target._unbind()
        status = WCStatus.IBV_WC_LOC_QP_OP_ERR      # as rxe completes a failed LOCAL_INV
    if why is None:
        return WCStatus.IBV_WC_SUCCESS
    qp.counters.inc("mw_bind_err" if opcode == WROpcode.IBV_WR_BIND_MW else "local_inv_err")
    log.info("qp %d: %s failed: %s", qp.qp_num, WROpcode(opcode).name, why)
    return status


def bind(qp, handle: int, new_rkey: int, lkey: int, addr: int, length: int,
         access: int) -> str | None:
    """Bind window `handle` of the QP's context (IBTA 10.6.7.2, the C10-7x/o10-3x rules as
    rxe applies them). Returns None, or why it is refused (the WR completes with
    IBV_WC_MW_BIND_ERR)."""
    device = qp.device
    mw = getattr(qp.owner, "mws", {}).get(handle)
    if mw is None:
        return f"no memory window with handle {handle} in this context"
    if mw.pd is not qp.pd:
        return "the window's PD is not the QP's (C10-72)"
    if new_rkey >> 8 != mw.rkey >> 8:
        return f"new rkey {new_rkey:#x} is not an rkey of window {mw.rkey:#x} (ibv_inc_rkey)"
    if access & ~BIND_ACCESS:
        return f"mw_access_flags {access:#x} has bits a window cannot have"
    zero_based = bool(access & Access.IBV_ACCESS_ZERO_BASED)
    mr = None
    if lkey:
        mr = device.keys.by_lkey(lkey)
        if mr is None:
            return f"bind_info.mr (lkey {lkey:#x}) is not a registered MR"
    elif length:
        return "a bind with a length needs bind_info.mr"
    if mw.type == TYPE_1:
        if zero_based:
            return "a type 1 window cannot be zero-based (o10-36.2.2)"
    else:
        if mw.bound:
            return "a type 2 window must be invalidated before it is bound again (o10-37.2.30)"
        if mr is None or not length:
            return "a type 2 window is bound to a range of an MR, never to nothing (o10-37.2.40)"
    if mr is None or not length:                    # type 1: unbind (a zero-length window)
        mw._unbind()
        mw.rkey = mw.dp.rkey = new_rkey
        return None
    if mr.pd is not mw.pd:
        return "the MR's PD is not the window's"
    if mr.access & Access.IBV_ACCESS_ZERO_BASED:
        return "windows cannot be bound to a zero-based MR"
    if not mr.access & Access.IBV_ACCESS_MW_BIND:
        return "the MR was registered without IBV_ACCESS_MW_BIND (C10-73)"
    if access & WRITABLE and not mr.access & Access.IBV_ACCESS_LOCAL_WRITE:
        return "remote write/atomic windows need an MR with local write (C10-74)"
    if mr.offset_of(addr, length) is None:
        return (f"[{addr:#x}, +{length}) is not inside the MR [{mr.iova:#x}, +{mr.length}) "
                "(C10-75)")
    mw._unbind()
    mw.mr = mr
    mw.rkey = new_rkey
    d = mw.dp
    d.base, d.iova, d.length = mr.pointer(addr), 0 if zero_based else addr, length
    d.rkey, d.access = new_rkey, int(access & REMOTE)
    if mw.type == TYPE_2:
        mw.qp = qp
        d.qpn = qp.qp_num
    d.flags = KEY_MW
    return None


def check_invalidate(qp, rkey: int, remote: bool) -> tuple[MW | None, str | None]:
    """The window a LOCAL_INV (remote=False) or a received SEND with Invalidate (remote=True)
    on qp may invalidate (IBTA 10.6.7.2.3, o10-37.2.x): a bound type 2 window of the QP's PD,
    for a remote invalidation one bound to this QP. -> (window, None) or (None, why)."""
    w = qp.device.keys.by_rkey(rkey)
    if not isinstance(w, MW):
        return None, (f"rkey {rkey:#x} names no memory window (rnicd has no fast-register "
                      "MRs: an MR's rkey cannot be invalidated)")
    if w.type != TYPE_2:
        return None, "a type 1 window cannot be invalidated, only bound again with length 0"
    if w.pd is not qp.pd:
        return None, "the window's PD is not the QP's"
    if not w.bound:
        return None, "the window is not bound"
    if remote and w.qp is not qp:
        return None, "the window is bound to another QP"
    return w, None


def invalidate(w: MW):
    w._unbind()

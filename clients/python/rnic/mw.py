"""Memory windows: ``MW(pd, mw_type)``, ``MWBindInfo``, ``MWBind``, as pyverbs.mr has them
(re-exported there), and the bind of a type 1 window (``QP.bind_mw``, ibv_bind_mw).

A window opens part of an MR (registered with IBV_ACCESS_MW_BIND) to remote access under
its own rkey (IBTA 10.6.7). Type 1 windows are bound with ``qp.bind_mw(mw, MWBind(...))``,
which posts a bind work request on the QP and gives the window its next rkey
(``ibv_inc_rkey``); binding one with length 0 invalidates it. Type 2 (2B) windows are bound
with a work request, ``SendWR(opcode=IBV_WR_BIND_MW).set_bind_wr(mw, info)`` (the WR's
``rkey`` is the new rkey), serve only the QP they were bound on, and are invalidated by
IBV_WR_LOCAL_INV or by the peer's IBV_WR_SEND_WITH_INV (``wr.imm_data`` carries the rkey to
invalidate, as ibv_send_wr's invalidate_rkey shares imm_data's place). Every rule is
checked by the daemon when it runs the WR (a refused bind completes with
IBV_WC_MW_BIND_ERR); the client checks what ibv_bind_mw itself checks.
"""
import errno

from rnicd.wire.abi import WROpcode

from ._unsupported import AttrHolder
from .base import RnicCM
from .device import need_int
from .errors import RnicError, einval

MW_TYPES = {1: "IBV_MW_TYPE_1", 2: "IBV_MW_TYPE_2"}


class MW(RnicCM):
    """A memory window: ``handle``, ``rkey`` (the current one), ``type``."""

    _destroy_verb = "dealloc_mw"
    _handle_key = "mw"

    def __init__(self, pd, mw_type):
        pd._check_open()
        ctx = pd.ctx
        try:
            r, _ = ctx._call("alloc_mw", {"pd": pd.handle, "mw_type": mw_type})
        except RnicError as exc:       # pyverbs' wording
            raise RnicError(exc.code, f"Failed to allocate MW: {exc.msg}") from None
        self.handle = need_int(r, "mw", "alloc_mw")
        self.rkey = need_int(r, "rkey", "alloc_mw")
        self.type = mw_type
        self.pd = pd
        self._init_cm(ctx)
        pd.add_ref(self)

    def __repr__(self) -> str:
        if self._closed:
            return "MW(closed)"
        return f"MW({MW_TYPES.get(self.type, self.type)}, rkey={self.rkey:#x})"


class MWBindInfo(AttrHolder):
    """struct ibv_mw_bind_info: ``MWBindInfo(mr, addr, length, mw_access_flags)``."""

    _fields = ("mr", "addr", "length", "mw_access_flags")


class MWBind(AttrHolder):
    """struct ibv_mw_bind: ``MWBind(bind_info, send_flags, wr_id=0)``."""

    _fields = ("bind_info", "send_flags", "wr_id")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.wr_id is None:
            self.wr_id = 0


def bind_mw(qp, mw, mw_bind) -> None:
    """ibv_bind_mw: bind a type 1 window with a work request on qp; on success the
    window's rkey is the new one (its completion tells whether the bind took)."""
    if not isinstance(mw, MW) or mw.closed:
        raise einval("bind_mw: mw must be an open MW")
    if mw.type != 1:
        raise RnicError(errno.EINVAL, "Failed to Bind MW: bind_mw binds type 1 windows; "
                        "bind a type 2 window with SendWR(opcode=IBV_WR_BIND_MW)"
                        ".set_bind_wr(mw, bind_info)")
    info = getattr(mw_bind, "bind_info", None)
    if info is None:
        raise einval("bind_mw: MWBind needs a bind_info (MWBindInfo)")
    if info.mr is None and (info.addr or info.length):
        raise RnicError(errno.EINVAL, "Failed to Bind MW: a range needs bind_info.mr")
    if info.mr is not None and info.mr.pd is not mw.pd:
        raise RnicError(errno.EPERM, "Failed to Bind MW: the MR and the MW are in different "
                        "PDs")
    from .wr import SendWR

    wr = SendWR(wr_id=mw_bind.wr_id, opcode=WROpcode.IBV_WR_BIND_MW,
                send_flags=mw_bind.send_flags)
    wr.set_bind_wr(mw, info)
    qp.post_send(wr)
    mw.rkey = wr.rkey       # as libibverbs' providers do: the key the bind gives it

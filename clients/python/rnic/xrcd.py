"""XRC domains: ``XRCD(ctx, XRCDInitAttr(comp_mask, oflags, fd))``, as pyverbs.xrcd.

An XRC domain (IBTA Annex A14) groups the XRC SRQs and XRC TGT QPs that may serve one
another. Contexts that open the same file share one domain (ibv_open_xrcd keys it by the
file's inode); ``fd=-1`` makes a private domain. ``oflags``: O_CREAT creates the domain of a
file that has none yet (else EAGAIN), O_EXCL refuses a file that has one (EINVAL).
"""
import errno

from rnicd.wire.abi import XRCDInitAttrMask

from .base import RnicCM
from .device import need_int
from .errors import RnicError, einval

XM = XRCDInitAttrMask


class XRCDInitAttr:
    """struct ibv_xrcd_init_attr: ``XRCDInitAttr(comp_mask, oflags, fd)`` (all three, as
    pyverbs takes them). comp_mask must have IBV_XRCD_INIT_ATTR_FD and _OFLAGS."""

    def __init__(self, comp_mask, oflags, fd):
        self.comp_mask = comp_mask
        self.oflags = oflags
        self.fd = fd

    def __repr__(self) -> str:
        return f"XRCDInitAttr(comp_mask={self.comp_mask}, oflags={self.oflags:#o}, fd={self.fd})"


class XRCD(RnicCM):
    """An XRC domain of a context. XRC SRQs (SrqInitAttrEx.xrcd) and XRC TGT QPs
    (QPInitAttrEx.xrcd) are created in it; closing it closes them first."""

    _destroy_verb = "close_xrcd"
    _handle_key = "xrcd"

    def __init__(self, context, init_attr: XRCDInitAttr):
        if context is None or init_attr is None:
            raise TypeError("XRCD(context, init_attr): both are required")
        context._check_open()
        mask = init_attr.comp_mask
        if isinstance(mask, bool) or not isinstance(mask, int) or mask < 0:
            raise einval(f"Failed to allocate XRCD: comp_mask {mask!r} is not a mask")
        if mask >= XM.IBV_XRCD_INIT_ATTR_RESERVED:
            raise RnicError(errno.EOPNOTSUPP, f"Failed to allocate XRCD: comp_mask {mask:#x} "
                            "has bits libibverbs does not know")
        if not (mask & XM.IBV_XRCD_INIT_ATTR_FD and mask & XM.IBV_XRCD_INIT_ATTR_OFLAGS):
            raise einval("Failed to allocate XRCD: comp_mask needs IBV_XRCD_INIT_ATTR_FD and "
                         "IBV_XRCD_INIT_ATTR_OFLAGS (fd -1 for a private domain)")
        fd, oflags = init_attr.fd, init_attr.oflags
        for name, v in (("fd", fd), ("oflags", oflags)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise einval(f"Failed to allocate XRCD: {name} must be an integer, got {v!r}")
        if fd < -1:
            raise RnicError(errno.EBADF, f"Failed to allocate XRCD: bad fd {fd}")
        r, _ = context._call("open_xrcd", {"oflags": oflags & 0xFFFFFFFF},
                             fds=[fd] if fd >= 0 else [])
        self.handle = need_int(r, "xrcd", "open_xrcd")
        self.ctx = self.context = context
        self._init_cm(context)
        context.add_ref(self)

    def __repr__(self) -> str:
        return f"XRCD(handle={getattr(self, 'handle', None)}{', closed' if self._closed else ''})"

"""Protection domains: ``PD(ctx)`` and parent domains, as pyverbs.pd."""
import ctypes
import errno
import mmap

from rnicd.wire.rings import RingKind

from . import _usermem
from ._unsupported import AttrHolder
from .base import RnicCM
from .device import need_int
from .enums import _IBV_ALLOCATOR_USE_DEFAULT
from .errors import RnicError

USE_DEFAULT = _IBV_ALLOCATOR_USE_DEFAULT
# The resource_type a parent domain's allocators are called with: which queue a buffer is
# for. Provider-specific in libibverbs (mlx5dv has MLX5DV_RES_TYPE_*); these are rnic's.
RES_TYPE = {RingKind.SQ: 1, RingKind.RQ: 2, RingKind.SRQ: 3, RingKind.CQ: 4}
_PAGE = mmap.PAGESIZE
MAP_FIXED = 0x10                     # Linux's (the mmap module does not export it)


class PD(RnicCM):
    """A protection domain. MRs, QPs, SRQs and AHs are created on a PD."""

    _destroy_verb = "dealloc_pd"
    _handle_key = "pd"

    def __init__(self, ctx, handle=None):
        """``handle``: import that PD of a shared context (ibv_import_pd) instead."""
        ctx._check_open()
        if handle is not None:
            ctx._call("import_pd", {"pd": handle})
            self.handle = handle
        else:
            r, _ = ctx._call("alloc_pd")
            self.handle = need_int(r, "pd", "alloc_pd")
        self.ctx = ctx
        self._init_cm(ctx)
        ctx.add_ref(self)

    def __repr__(self) -> str:
        return f"PD(handle={self.handle}{', closed' if self._closed else ''})"


class ParentDomainInitAttr(AttrHolder):
    """struct ibv_parent_domain_init_attr: ``ParentDomainInitAttr(pd, pd_context=None)``."""

    _fields = ("pd", "pd_context", "comp_mask")


class ParentDomainContext(AttrHolder):
    """The allocators of a parent domain, as pyverbs has them:
    ``ParentDomainContext(pd, alloc_func, free_func, user_data=None)``. They are called as
    ``alloc_func(pd, context, size, alignment, resource_type)`` -> an address, or
    IBV_ALLOCATOR_USE_DEFAULT; ``free_func(pd, context, ptr, resource_type)``."""

    _fields = ("pd", "p_alloc", "p_free", "user_data")


class ParentDomain(PD):
    """ibv_alloc_parent_domain: a PD for every verb that takes one (rnicd sees the PD it was
    made on) whose queues live in memory the application's allocators give: rnic maps the
    queue's shared ring over that memory (MAP_FIXED), and hands it back to free_func as
    ordinary private memory when the queue goes. Without allocators, or when alloc_func
    answers IBV_ALLOCATOR_USE_DEFAULT, the ring is mapped where it would be anyway."""

    _destroy_verb = None             # rnicd has no object of its own for it

    def __init__(self, context, attr: ParentDomainInitAttr):
        pd = getattr(attr, "pd", None)
        if not isinstance(pd, PD) or isinstance(pd, ParentDomain):
            raise RnicError(errno.EINVAL, "Failed to allocate Parent Domain: "
                            "ParentDomainInitAttr.pd must be a PD")
        pd._check_open()
        if pd.ctx is not context:
            raise RnicError(errno.EINVAL, "Failed to allocate Parent Domain: its PD belongs "
                            "to another context")
        self.handle, self.pd, self.ctx = pd.handle, pd, context
        pdc = getattr(attr, "pd_context", None)
        alloc, free = getattr(pdc, "p_alloc", None), getattr(pdc, "p_free", None)
        if (alloc is None) != (free is None):
            raise RnicError(errno.EINVAL, "Failed to allocate Parent Domain: give both "
                            "allocators or neither")
        self._placement = _Placement(self, pdc, alloc, free) if alloc else None
        self._init_cm(context)
        pd.add_ref(self)

    def __repr__(self) -> str:
        return f"ParentDomain(pd={self.handle}{', closed' if self._closed else ''})"


class _Placement:
    """A parent domain's allocators, as Ring uses them to place a queue."""

    def __init__(self, pd, context, alloc, free):
        self.pd, self.context, self.alloc, self.free = pd, context, alloc, free

    def map(self, fd: int, size: int, kind: int, what: str):
        length = -(-size // _PAGE) * _PAGE
        res = RES_TYPE[kind]
        addr = self.alloc(self.pd, self.context, length, _PAGE, res)
        if addr is None or addr == USE_DEFAULT:
            return None
        if isinstance(addr, bool) or not isinstance(addr, int) or addr <= 0 or addr % _PAGE:
            raise RnicError(errno.EINVAL, f"{what}: the parent domain's allocator returned "
                            f"{addr!r}, not a {_PAGE}-aligned address")
        try:
            _usermem._sys_mmap(addr, length, mmap.PROT_READ | mmap.PROT_WRITE,
                               mmap.MAP_SHARED | MAP_FIXED, fd, 0)
        except RnicError as exc:
            self.free(self.pd, self.context, addr, res)
            raise RnicError(exc.code, f"{what}: mapping the queue over the parent domain's "
                            f"memory at {addr:#x} failed: {exc.msg}") from None
        return _Placed(self, addr, length, size, res)


class _Placed:
    """A queue mapped over allocator memory: ``buffer`` views it; unmap() gives it back."""

    def __init__(self, place, addr, length, size, res):
        self.place, self.addr, self.length, self.res = place, addr, length, res
        self.buffer = (ctypes.c_char * size).from_address(addr)

    def unmap(self) -> None:
        p = self.place
        try:   # ordinary private memory again at the same place, then the allocator's own
            _usermem._sys_mmap(self.addr, self.length, mmap.PROT_READ | mmap.PROT_WRITE,
                               mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED)
        finally:
            self.buffer = None
            p.free(p.pd, p.context, self.addr, self.res)

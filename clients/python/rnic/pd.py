"""Protection domains: ``PD(ctx)``, as pyverbs.pd."""
from ._unsupported import AttrHolder, verb_classes
from .base import RnicCM
from .device import need_int


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


# Parent domains with custom allocators: not offered yet.
verb_classes(globals(), "parent domains", "ParentDomain")


class ParentDomainInitAttr(AttrHolder):
    """struct ibv_parent_domain_init_attr: ``ParentDomainInitAttr(pd, pd_context=None)``."""

    _fields = ("pd", "pd_context")


class ParentDomainContext(AttrHolder):
    """pyverbs' holder of a parent domain's allocators: ``(pd, alloc_func, free_func)``."""

    _fields = ("pd", "p_alloc", "p_free")

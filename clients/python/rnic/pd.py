"""Protection domains: ``PD(ctx)``, as pyverbs.pd."""
from .base import RnicCM
from .device import need_int


class PD(RnicCM):
    """A protection domain. MRs, QPs, SRQs and AHs are created on a PD."""

    _destroy_verb = "dealloc_pd"
    _handle_key = "pd"

    def __init__(self, ctx):
        ctx._check_open()
        r, _ = ctx._call("alloc_pd")
        self.handle = need_int(r, "pd", "alloc_pd")
        self.ctx = ctx
        self._init_cm(ctx)
        ctx.add_ref(self)

    def __repr__(self) -> str:
        return f"PD(handle={self.handle}{', closed' if self._closed else ''})"

"""pyverbs.xrcd: XRC domains are not offered yet (EOPNOTSUPP; IBV_DEVICE_XRC is clear)."""
from ._unsupported import AttrHolder, verb_classes

verb_classes(globals(), "XRC", "XRCD")


class XRCDInitAttr(AttrHolder):
    """struct ibv_xrcd_init_attr: ``XRCDInitAttr(comp_mask=0, oflags=0, fd=-1)``."""

    _fields = ("comp_mask", "oflags", "fd")

    def __init__(self, comp_mask=0, oflags=0, fd=-1):
        super().__init__(comp_mask, oflags, fd)

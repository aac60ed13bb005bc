"""librdmacm enumerations (rdma_cma.h names and values), as ``pyverbs.cm_enums``."""
from rnicd.wire.cma import RAI_PASSIVE, RDMA_PS_TCP, CMEventType

for _m in CMEventType:
    if _m.name.startswith("RDMA_"):
        globals()[_m.name] = _m.value
del _m

rdma_cm_event_type = CMEventType

__all__ = ["RAI_PASSIVE", "RDMA_PS_TCP", "CMEventType", "rdma_cm_event_type"]

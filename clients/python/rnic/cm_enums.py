"""librdmacm enumerations (rdma_cma.h names and values), as ``pyverbs.cm_enums``."""
from rnicd.wire.cma import (
    RAI_PASSIVE,
    RDMA_OPTION_IB,
    RDMA_OPTION_IB_PATH,
    RDMA_OPTION_ID,
    RDMA_OPTION_ID_ACK_TIMEOUT,
    RDMA_OPTION_ID_AFONLY,
    RDMA_OPTION_ID_REUSEADDR,
    RDMA_OPTION_ID_TOS,
    RDMA_PS_IB,
    RDMA_PS_IPOIB,
    RDMA_PS_TCP,
    RDMA_PS_UDP,
    RDMA_UDP_QKEY,
    CMEventType,
)

for _m in CMEventType:
    if _m.name.startswith("RDMA_"):
        globals()[_m.name] = _m.value
del _m

rdma_cm_event_type = CMEventType

__all__ = ["RAI_PASSIVE", "RDMA_OPTION_IB", "RDMA_OPTION_IB_PATH", "RDMA_OPTION_ID",
           "RDMA_OPTION_ID_ACK_TIMEOUT", "RDMA_OPTION_ID_AFONLY", "RDMA_OPTION_ID_REUSEADDR",
           "RDMA_OPTION_ID_TOS", "RDMA_PS_IB", "RDMA_PS_IPOIB", "RDMA_PS_TCP", "RDMA_PS_UDP",
           "RDMA_UDP_QKEY", "CMEventType", "rdma_cm_event_type"]

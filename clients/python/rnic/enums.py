"""libibverbs enumerations (names and values of verbs.h), as ``pyverbs.enums`` offers them.

``import rnic.enums as e; e.IBV_QPT_RC`` works, and so do the enum classes (``e.QPType``...).
The values come from the daemon's own table (rnicd.wire.abi), so client and daemon agree.
"""
from rnicd.wire.abi import *  # noqa: F403  (the flat IBV_* names)
from rnicd.wire.abi import (  # noqa: F401  (re-exported)
    _NOT_OFFERED,
    MTU,
    WC_OPCODE_OF_WR,
    Access,
    AtomicCap,
    EventType,
    MigState,
    PortState,
    QPAttrMask,
    QPState,
    QPType,
    SendFlags,
    SRQAttrMask,
    WCFlags,
    WCOpcode,
    WCStatus,
    WROpcode,
    mtu_bytes,
)

# rnic_abi.h: completion-notification arm values of a CQ ring header.
RNIC_CQ_DISARMED = 0
RNIC_CQ_ARM_NEXT = 1
RNIC_CQ_ARM_SOLICITED = 2

# verbs.h names of what rnicd does not offer, underscored ones included
globals().update(_NOT_OFFERED)

# verbs.h: parent domains (ibv_alloc_parent_domain)
IBV_PARENT_DOMAIN_INIT_ATTR_ALLOCATORS = 1 << 0
IBV_PARENT_DOMAIN_INIT_ATTR_PD_CONTEXT = 1 << 1
_IBV_ALLOCATOR_USE_DEFAULT = (1 << 64) - 1      # IBV_ALLOCATOR_USE_DEFAULT, ((void *)-1)

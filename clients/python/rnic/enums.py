"""libibverbs enumerations (names and values of verbs.h), as ``pyverbs.enums`` offers them.

``import rnic.enums as e; e.IBV_QPT_RC`` works, and so do the enum classes (``e.QPType``...).
The values come from the daemon's own table (rnicd.wire.abi), so client and daemon agree.
"""
from rnicd.wire.abi import *  # noqa: F403  (the flat IBV_* names)
from rnicd.wire.abi import (  # noqa: F401  (re-exported)
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

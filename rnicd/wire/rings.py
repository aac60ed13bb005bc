"""The shared-memory ring layout of native/include/rnic_abi.h, for Python.

The C header is the definition; these are its numbers for the daemon's control plane and the
Python client (tests/unit/test_native.py checks each against the compiled header).
"""
import struct
from enum import IntEnum

ABI_VERSION = 2                 # RNIC_ABI_VERSION
RING_MAGIC = 0x524E4943         # RNIC_RING_MAGIC, "RNIC"
RING_HDR_SIZE = 256             # RNIC_RING_HDR_SIZE: four cache lines
SEND_WQE_HDR = 64               # RNIC_SEND_WQE_HDR_SIZE: struct rnic_send_wqe before its SGEs
RECV_WQE_HDR = 16               # RNIC_RECV_WQE_HDR_SIZE
SGE_SIZE = 16                   # struct rnic_sge
CQE_SIZE = 64                   # RNIC_CQE_SIZE

# The same layouts as struct formats, for writing and reading entries with one call each.
# struct rnic_send_wqe's header: wr_id, remote_addr, compare_add (bind_length), swap (bind_mw
# | bind_lkey << 32), opcode, _rsvd0, num_sge, send_flags, imm_data (invalidate_rkey), rkey,
# inline_len, ah (bind_access), remote_qpn (remote_srqn), remote_qkey.
SEND_WQE = struct.Struct("<QQQQBBHIIIIIII")
RECV_WQE = struct.Struct("<QII")                # wr_id, num_sge, _rsvd0
SGE = struct.Struct("<QII")                     # addr, length, lkey
# struct rnic_cqe: wr_id, status, opcode, vendor_err, byte_len, imm_data, qp_num, src_qp,
# wc_flags, pkey_index, slid, sl, dlid_path_bits (then 18 reserved bytes)
CQE = struct.Struct("<QIIIIIIIIHHBB18x")


class RingKind(IntEnum):
    """enum rnic_ring_kind."""
    SQ = 1
    RQ = 2
    SRQ = 3
    CQ = 4


def entry_bytes(kind: int, max_sge: int, max_inline: int = 0) -> int:
    """The least entry size that holds a WQE of max_sge SGEs (SQ: or max_inline bytes)."""
    if kind == RingKind.CQ:
        return CQE_SIZE
    if kind == RingKind.SQ:
        return SEND_WQE_HDR + max(max_sge * SGE_SIZE, max_inline)
    return RECV_WQE_HDR + max_sge * SGE_SIZE

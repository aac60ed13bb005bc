"""pyverbs.utils: string helpers for GIDs and enum values (same names and results)."""
import struct

from .pyverbs_error import PyverbsUserError


def be64toh(num: int) -> int:
    return struct.unpack("Q", struct.pack("!Q", num))[0]


def gid_str(subnet_prefix: int, interface_id: int) -> str:
    """A GID's 8-group string from struct ibv_gid's two (network-order) 64-bit halves."""
    h = f"{be64toh(subnet_prefix):016x}{be64toh(interface_id):016x}"
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))


def gid_str_to_array(val: str) -> list:
    """'xxxx:...:xxxx' (8 groups of 4 hex digits) -> 16 two-digit hex strings."""
    groups = val.split(":")
    if len(groups) != 8 or any(len(g) != 4 for g in groups):
        raise PyverbsUserError(f"Invalid GID value ({groups})")
    int("".join(groups), 16)
    return [g[i:i + 2] for g in groups for i in (0, 2)]


def _lookup(table: dict, v, unknown: str):
    return table.get(v, unknown.format(v))


def qp_type_to_str(qp_type: int) -> str:
    return _lookup({2: "RC", 3: "UC", 4: "UD", 8: "Raw Packet", 9: "XRCD_SEND",
                    10: "XRCD_RECV", 0xFF: "Driver QP"}, qp_type, "Unknown ({})")


def qp_state_to_str(qp_state: int) -> str:
    return _lookup({0: "Reset", 1: "Init", 2: "RTR", 3: "RTS", 4: "SQD", 5: "SQE",
                    6: "Error", 7: "Unknown"}, qp_state, "Unknown ({})")


def mtu_to_str(mtu: int) -> int:
    return {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}.get(mtu, 0)


def access_flags_to_str(flags: int) -> str:
    names = {1: "Local write", 2: "Remote write", 4: "Remote read", 8: "Remote atomic",
             16: "MW bind", 32: "Zero based", 64: "On demand"}
    return "".join(f"{n} " for f, n in names.items() if flags & f)


def mig_state_to_str(mig: int) -> str:
    return _lookup({0: "Migrated", 1: "Re-arm", 2: "Armed"}, mig, "Unknown ({})")


def rereg_error_to_str(error: int) -> str:
    return _lookup({-1: "IBV_REREG_MR_ERR_INPUT", -2: "IBV_REREG_MR_ERR_DONT_FORK_NEW",
                    -3: "IBV_REREG_MR_ERR_DO_FORK_OLD", -4: "IBV_REREG_MR_ERR_CMD",
                    -5: "IBV_REREG_MR_ERR_CMD_AND_DO_FORK_NEW"}, error, "Unknown error ({})")

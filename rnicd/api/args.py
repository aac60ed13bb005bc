"""Checks of untrusted control-verb arguments: each returns the value, typed and in range,
or raises EINVAL with a message that names the argument and the fix."""
from __future__ import annotations

import ipaddress

from rnicd.errors import einval


def arg_int(args: dict, name: str, lo: int, hi: int, default=None) -> int:
    v = args.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise einval(f"argument '{name}' must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise einval(f"argument '{name}'={v} out of range [{lo}, {hi}]")
    return v


def arg_bytes(args: dict, name: str, limit: int) -> bytes:
    v = args.get(name, b"")
    if v is None:
        return b""
    if not isinstance(v, bytes | bytearray):
        raise einval(f"argument '{name}' must be bytes, got {type(v).__name__}")
    if len(v) > limit:
        raise einval(f"argument '{name}' is {len(v)} bytes; at most {limit} fit")
    return bytes(v)


def arg_ipv4(args: dict, name: str) -> str:
    v = args.get(name)
    try:
        return str(ipaddress.IPv4Address(v))
    except (ipaddress.AddressValueError, ValueError):
        raise einval(f"argument '{name}' must be an IPv4 address, got {v!r}") from None


def arg_conn_param(args: dict) -> dict:
    """struct rdma_conn_param's numeric fields, with pyverbs ConnParam's defaults."""
    p = args.get("conn_param") or {}
    if not isinstance(p, dict):
        raise einval("'conn_param' must be a map (struct rdma_conn_param)")
    return {"responder_resources": arg_int(p, "responder_resources", 0, 255, 1),
            "initiator_depth": arg_int(p, "initiator_depth", 0, 255, 1),
            "flow_control": arg_int(p, "flow_control", 0, 1, 0),
            "retry_count": arg_int(p, "retry_count", 0, 7, 5),
            "rnr_retry_count": arg_int(p, "rnr_retry_count", 0, 7, 5),
            # an external QP (the id has none): its number, and whether it uses an SRQ
            "qp_num": arg_int(p, "qp_num", 0, 0xFFFFFF, 0),
            "srq": arg_int(p, "srq", 0, 1, 0)}

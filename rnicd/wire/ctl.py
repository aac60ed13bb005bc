"""The control protocol between a client and rnicd over a Unix stream socket.

Framing: every message is a 4-byte big-endian length followed by that many bytes of msgpack.
A message is a map:

  request   {"v": PROTOCOL_VERSION, "id": int, "m": method, "a": {args}, "nfds": n}
  reply     {"id": int, "r": {result}, "nfds": n}
  error     {"id": int, "e": {"code": errno, "name": "EINVAL", "msg": "..."}}
  event     {"ev": {"type": IBV_EVENT_*, ...}}          (asynchronous, no id)

File descriptors travel with SCM_RIGHTS on the first byte of their message; "nfds" says how
many belong to it, in order. One connection is one verbs context (like an open uverbs file):
when it closes, the daemon releases everything created through it.
"""
import errno as _errno
import struct

import msgpack

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 20   # bytes of msgpack in one message
MAX_FDS = 16            # fds in one message (reg_mr: one per memfd segment)

# Methods; args and results are documented in docs/control-protocol.md.
METHODS = (
    "hello", "query_device", "query_device_ex", "query_port", "query_gid",
    "alloc_pd", "dealloc_pd", "reg_mr", "dereg_mr", "create_ah", "destroy_ah",
    "create_comp_channel", "destroy_comp_channel",
    "create_cq", "resize_cq", "destroy_cq",
    "create_srq", "modify_srq", "query_srq", "destroy_srq",
    "create_qp", "modify_qp", "query_qp", "destroy_qp",
    "get_counters", "set_fault", "get_fault", "get_objects", "get_qps", "get_engines",
    "restart_engine",
    "cm_create_id", "cm_destroy_id", "cm_listen", "cm_connect", "cm_accept", "cm_reject",
    "cm_disconnect", "cm_establish", "cm_set_option", "cm_init_qp_attr", "cm_migrate_id",
    "open_qp",
    "import_context", "import_pd", "import_mr", "open_xrcd", "close_xrcd", "rereg_mr",
    "alloc_mw", "dealloc_mw",
)


class ProtocolError(Exception):
    """A peer broke the framing; the connection must be closed."""


def encode(msg: dict) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(body)) + body


class Decoder:
    """Incremental decoder: feed bytes, get complete messages (sans-I/O)."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf)
            if n > MAX_MESSAGE:
                raise ProtocolError(f"message length {n} exceeds {MAX_MESSAGE}")
            if len(self._buf) < HEADER.size + n:
                break
            body = bytes(self._buf[HEADER.size:HEADER.size + n])
            del self._buf[:HEADER.size + n]
            try:
                msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several types on garbage
                raise ProtocolError(f"undecodable message: {exc}") from None
            if not isinstance(msg, dict):
                raise ProtocolError("message is not a map")
            out.append(msg)
        return out


def error_body(code: int, msg: str) -> dict:
    return {"code": code, "name": _errno.errorcode.get(code, str(code)), "msg": msg}

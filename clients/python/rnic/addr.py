"""Addresses: GID, GlobalRoute, AHAttr (struct ibv_ah_attr) and AH, as in pyverbs.addr.

A GID is 16 bytes. Its string form is pyverbs' one: eight groups of four hex digits,
"0000:0000:0000:0000:0000:ffff:7f00:0001" (an IPv4-mapped address for RoCEv2 over IPv4);
any IPv6 notation ("::ffff:127.0.0.1") is accepted as input.
"""
import ipaddress

from .base import RnicCM
from .errors import RnicError, einval


def gid_bytes(val) -> bytes:
    """16 GID bytes from a GID, 16 bytes, or a string (pyverbs form or any IPv6 form)."""
    if isinstance(val, GID):
        return val.raw
    if isinstance(val, (bytes, bytearray, memoryview)):
        raw = bytes(val)
        if len(raw) != 16:
            raise einval(f"a GID is 16 bytes, got {len(raw)}")
        return raw
    if isinstance(val, str):
        s = val.strip()
        groups = s.split(":")
        if len(groups) == 8 and all(len(g) == 4 for g in groups):
            try:
                return bytes.fromhex("".join(groups))
            except ValueError:
                pass
        try:
            return ipaddress.IPv6Address(s).packed
        except ValueError:
            pass
        try:   # a bare IPv4 address: its IPv4-mapped GID (RoCEv2 over IPv4)
            return ipaddress.IPv6Address("::ffff:" + str(ipaddress.IPv4Address(s))).packed
        except ValueError:
            raise einval(f"not a GID: {val!r} (expected e.g. "
                         "'0000:0000:0000:0000:0000:ffff:7f00:0001')") from None
    raise einval(f"not a GID: {val!r}")


def gid_str(raw: bytes) -> str:
    h = bytes(raw).hex()
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))


class GID:
    """struct ibv_gid: ``gid`` is the string form, ``raw`` the 16 bytes."""

    __slots__ = ("_raw", "gid_type")

    def __init__(self, val=None):
        self._raw = bytes(16) if val is None else gid_bytes(val)
        self.gid_type = None   # IBV_GID_TYPE_* when it came from query_gid

    @property
    def gid(self) -> str:
        return gid_str(self._raw)

    @gid.setter
    def gid(self, val) -> None:
        self._raw = gid_bytes(val)

    @property
    def raw(self) -> bytes:
        return self._raw

    def __str__(self) -> str:
        return self.gid

    def __repr__(self) -> str:
        return f"GID('{self.gid}')"

    def __eq__(self, other) -> bool:
        if isinstance(other, GID):
            return self._raw == other._raw
        if isinstance(other, (str, bytes, bytearray)):
            try:
                return self._raw == gid_bytes(other)
            except Exception:
                return False
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)


class GlobalRoute:
    """struct ibv_global_route: where a GRH sends packets (the destination GID and more)."""

    def __init__(self, dgid=None, flow_label=0, sgid_index=0, hop_limit=1, traffic_class=0):
        self._dgid = GID(dgid)
        self.flow_label = flow_label
        self.sgid_index = sgid_index
        self.hop_limit = hop_limit
        self.traffic_class = traffic_class

    @property
    def dgid(self) -> str:
        return self._dgid.gid

    @dgid.setter
    def dgid(self, val) -> None:
        self._dgid = GID(val)

    def to_dict(self) -> dict:
        return {"dgid": self._dgid.raw, "flow_label": self.flow_label,
                "sgid_index": self.sgid_index, "hop_limit": self.hop_limit,
                "traffic_class": self.traffic_class}

    @classmethod
    def from_dict(cls, d: dict) -> "GlobalRoute":
        return cls(dgid=d.get("dgid") or bytes(16), flow_label=d.get("flow_label", 0),
                   sgid_index=d.get("sgid_index", 0), hop_limit=d.get("hop_limit", 1),
                   traffic_class=d.get("traffic_class", 0))

    def __repr__(self) -> str:
        return (f"GlobalRoute(dgid='{self.dgid}', flow_label={self.flow_label}, "
                f"sgid_index={self.sgid_index}, hop_limit={self.hop_limit}, "
                f"traffic_class={self.traffic_class})")


class AHAttr:
    """struct ibv_ah_attr. RoCE routes by GID: give ``gr`` (is_global is then set to 1)."""

    def __init__(self, dlid=0, sl=0, src_path_bits=0, static_rate=0, is_global=0,
                 port_num=1, gr=None):
        self.dlid = dlid
        self.sl = sl
        self.src_path_bits = src_path_bits
        self.static_rate = static_rate
        self.port_num = port_num
        self.gr = gr if gr is not None else GlobalRoute()
        self.is_global = 1 if gr is not None else is_global

    @property
    def grh(self) -> GlobalRoute:
        return self.gr

    @grh.setter
    def grh(self, val: GlobalRoute) -> None:
        self.gr = val

    # pyverbs' convenience accessors of the GRH fields
    @property
    def dgid(self) -> str:
        return self.gr.dgid

    @dgid.setter
    def dgid(self, val) -> None:
        self.gr.dgid = val

    @property
    def sgid_index(self) -> int:
        return self.gr.sgid_index

    @sgid_index.setter
    def sgid_index(self, val) -> None:
        self.gr.sgid_index = val

    @property
    def hop_limit(self) -> int:
        return self.gr.hop_limit

    @hop_limit.setter
    def hop_limit(self, val) -> None:
        self.gr.hop_limit = val

    @property
    def flow_label(self) -> int:
        return self.gr.flow_label

    @flow_label.setter
    def flow_label(self, val) -> None:
        self.gr.flow_label = val

    @property
    def traffic_class(self) -> int:
        return self.gr.traffic_class

    @traffic_class.setter
    def traffic_class(self, val) -> None:
        self.gr.traffic_class = val

    def to_dict(self) -> dict:
        """The control-protocol shape (docs/control-protocol.md, modify_qp ah_attr)."""
        return {"port_num": self.port_num, "is_global": self.is_global, "sl": self.sl,
                "src_path_bits": self.src_path_bits, "dlid": self.dlid,
                "static_rate": self.static_rate, "grh": self.gr.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "AHAttr":
        ah = cls(dlid=d.get("dlid", 0), sl=d.get("sl", 0),
                 src_path_bits=d.get("src_path_bits", 0), static_rate=d.get("static_rate", 0),
                 is_global=d.get("is_global", 0), port_num=d.get("port_num", 1))
        if isinstance(d.get("grh"), dict):
            ah.gr = GlobalRoute.from_dict(d["grh"])
        return ah

    def __repr__(self) -> str:
        return (f"AHAttr(port_num={self.port_num}, is_global={self.is_global}, sl={self.sl}, "
                f"dlid={self.dlid}, gr={self.gr!r})")


GRH_LEN = 40
WC_GRH = 1      # IBV_WC_GRH


def _grh_bytes(ctx, grh) -> bytes:
    """The 40 GRH bytes a receive placed in front of a UD payload: given as bytes, or (as
    pyverbs takes it) as an address, which must lie inside a memory region of this context
    (rnic reads it through the MR's own mapping, never through a raw pointer)."""
    if isinstance(grh, (bytes, bytearray, memoryview)):
        raw = bytes(grh)
        if len(raw) < GRH_LEN:
            raise einval(f"AH: a GRH is {GRH_LEN} bytes, got {len(raw)}")
        return raw[:GRH_LEN]
    if isinstance(grh, bool) or not isinstance(grh, int):
        raise einval(f"AH: grh must be an address or bytes, got {type(grh).__name__}")
    for mr in list(ctx._mrs.values()):
        if mr.mmap is not None and mr.buf <= grh and grh + GRH_LEN <= mr.buf + mr.length:
            return bytes(mr.mmap[grh - mr.buf:grh - mr.buf + GRH_LEN])
    raise einval(f"AH: grh address {grh:#x} is not inside a memory region of this context")


def ah_attr_from_wc(ctx, wc, grh, port_num: int = 1) -> AHAttr:
    """ibv_init_ah_from_wc for RoCEv2: the sender's address from the received GRH (for
    IPv4, A17.4.5.2: the IPv4 header in its last 20 bytes; otherwise the IBA GRH), so the
    reply goes back where the datagram came from."""
    if not int(getattr(wc, "wc_flags", 0)) & WC_GRH:
        raise einval("AH from a WC: the completion has no GRH (IBV_WC_GRH clear); RoCE "
                     "addresses by GID")
    raw = _grh_bytes(ctx, grh)
    if raw[20] >> 4 == 4:                       # IPv4 header: source at bytes 12..16
        dgid = "::ffff:" + str(ipaddress.IPv4Address(raw[20 + 12:20 + 16]))
        tclass, flow = raw[20 + 1], 0
    elif raw[0] >> 4 == 6:                      # IBA GRH / IPv6: SGID at bytes 8..24
        dgid = raw[8:24]
        vtf = int.from_bytes(raw[0:4], "big")
        tclass, flow = (vtf >> 20) & 0xFF, vtf & 0xFFFFF
    else:
        raise einval("AH from a WC: the GRH is neither an IPv4 nor an IPv6/IBA header")
    gr = GlobalRoute(dgid=dgid, flow_label=flow, sgid_index=0, hop_limit=0xFF,
                     traffic_class=tclass)
    return AHAttr(dlid=getattr(wc, "slid", 0), sl=getattr(wc, "sl", 0),
                  src_path_bits=getattr(wc, "dlid_path_bits", 0), port_num=port_num, gr=gr)


class AH(RnicCM):
    """An address handle for UD sends: ``AH(pd, attr=AHAttr(...))``, or as
    ibv_create_ah_from_wc ``AH(pd, wc=WC, grh=address_or_bytes, port_num=1)``."""

    _destroy_verb = "destroy_ah"
    _handle_key = "ah"

    def __init__(self, pd, attr: AHAttr = None, **kwargs):
        if attr is None:
            attr = kwargs.get("ah_attr")
        if attr is None and kwargs.get("wc") is not None:
            attr = ah_attr_from_wc(pd.ctx, kwargs["wc"], kwargs.get("grh"),
                                   kwargs.get("port_num", 1))
        if not isinstance(attr, AHAttr):
            raise einval("AH(pd, attr=AHAttr(...)) or AH(pd, wc=, grh=, port_num=): an "
                         "AHAttr or a received completion is needed")
        pd._check_open()
        ctx = pd.ctx
        try:
            r, _ = ctx._call("create_ah", {"pd": pd.handle, "ah_attr": attr.to_dict()})
        except RnicError as exc:         # pyverbs' words, which programs match
            raise RnicError(exc.code, f"Failed to create AH: {exc.msg}") from None
        self.handle = r["ah"]
        self.attr = attr
        self.pd = pd
        self._init_cm(ctx)
        pd.add_ref(self)

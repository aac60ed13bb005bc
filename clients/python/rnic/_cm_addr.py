"""rdma_cm addressing for rnic.cmid: port spaces, ``AddrInfo`` (rdma_getaddrinfo's shape)
and route resolution through the kernel's routing table (the netdev that reaches a
destination must be the device's; the source is the device's GID 0)."""
from __future__ import annotations

import errno
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

from rnicd.wire.abi import QPType
from rnicd.wire.cma import (
    PORT_SPACES,
    RAI_PASSIVE,
    RDMA_PS_TCP,
    UD_PORT_SPACES,
)

from .device import Context
from .errors import RnicError, einval

RTN_LOCAL = 2


def _port_space(ps) -> int:
    """A port space of rdma_cm (0, the hints' default, is RDMA_PS_TCP)."""
    ps = RDMA_PS_TCP if ps in (0, None) else ps
    if isinstance(ps, bool) or not isinstance(ps, int) or ps not in PORT_SPACES:
        raise einval(f"port space {ps!r} is none of rdma_cm's "
                     f"({', '.join(PORT_SPACES.values())})")
    return int(ps)


def qp_type_of(ps: int) -> QPType:
    """The QP type of a port space (rdma_getaddrinfo's ai_qp_type)."""
    return QPType.IBV_QPT_UD if ps in UD_PORT_SPACES else QPType.IBV_QPT_RC


# ---- addresses ----------------------------------------------------------------------------
def _ipv4(host) -> str | None:
    if host is None:
        return None
    if isinstance(host, bytes):
        host = host.decode()
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except (socket.gaierror, IndexError):
        raise RnicError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r} to an IPv4 address "
                        "(rnicd speaks RoCEv2 over IPv4)") from None


def _port(service) -> int:
    if service is None:
        return 0
    if isinstance(service, bytes):
        service = service.decode()
    if isinstance(service, str) and not service.isdigit():
        try:
            return socket.getservbyname(service)
        except OSError:
            raise einval(f"unknown service {service!r}") from None
    port = int(service)
    if not 0 <= port <= 0xFFFF:
        raise einval(f"port {port} out of range")
    return port


class AddrInfo:
    """rdma_addrinfo: ``AddrInfo(src=None, dst=None, service=None, port_space=RDMA_PS_TCP,
    flags=0)``. With ``flags=RAI_PASSIVE`` the address and service are where to listen;
    otherwise ``dst``/``service`` are the peer and ``src`` an optional source. ``qp_type``
    follows the port space (RC for TCP and IB, UD for UDP and IPoIB)."""

    def __init__(self, src=None, dst=None, service=None, port_space=RDMA_PS_TCP, flags=0,
                 src_service=None, dst_service=None):
        self.flags = int(flags)
        self.port_space = _port_space(port_space)
        self.qp_type = qp_type_of(self.port_space)
        self.src = _ipv4(src)
        self.dst = _ipv4(dst)
        self.passive = bool(self.flags & RAI_PASSIVE)
        self.port = _port(service if service is not None else
                          src_service if self.passive else dst_service)
        if not self.passive and self.dst is None:
            raise einval("AddrInfo: an active AddrInfo needs dst (or flags=RAI_PASSIVE)")

    def __repr__(self) -> str:
        kind = "passive" if self.passive else "active"
        return f"AddrInfo({kind}, src={self.src}, dst={self.dst}, port={self.port})"


_route_pool: ThreadPoolExecutor | None = None
_ipr = None


def route_to(dst: str):
    """(oif index, preferred source, route type) of the kernel's route to dst. pyroute2's
    synchronous API runs its own loop, so it runs in a worker thread (the caller may be
    inside asyncio)."""
    global _route_pool

    def lookup():
        global _ipr
        if _ipr is None:               # one netlink socket, kept by the worker thread
            from pyroute2 import IPRoute
            _ipr = IPRoute()
        r = _ipr.route("get", dst=dst)[0]
        return r.get_attr("RTA_OIF"), r.get_attr("RTA_PREFSRC"), r["type"]
    if _route_pool is None:
        _route_pool = ThreadPoolExecutor(1, thread_name_prefix="rnic-route")
    try:
        return _route_pool.submit(lookup).result(timeout=10)
    except Exception as exc:       # pyroute2's NetlinkError and friends
        raise RnicError(errno.ENETUNREACH, f"no route to {dst}: {exc}") from None


def resolve_source(ctx: Context, dst: str, src: str | None = None) -> str:
    """The source address for a connection from ctx's device to dst (rdma_resolve_addr):
    the kernel's route to dst must leave through the device's netdev; the source is the
    device's GID 0, the address it sends from."""
    r, _ = ctx._call("query_gid", {"port": 1, "index": 0})
    gid, ifindex = bytes(r.get("gid") or b""), r.get("ndev_ifindex")
    dev_ip = str(ipaddress.IPv4Address(gid[12:])) if len(gid) == 16 else None
    if dev_ip is None:
        raise RnicError(errno.EADDRNOTAVAIL, f"device {ctx.name} has no IPv4 GID 0")
    if src not in (None, "0.0.0.0", dev_ip):
        raise RnicError(errno.EADDRNOTAVAIL, f"source {src} is not the address of device "
                        f"{ctx.name} ({dev_ip}); rnicd sends from its bound address")
    oif, _prefsrc, rtype = route_to(dst)
    if isinstance(ifindex, int) and oif != ifindex and rtype != RTN_LOCAL:
        raise RnicError(errno.ENETUNREACH, f"the route to {dst} leaves through interface "
                        f"{oif}, but device {ctx.name} is bound to interface {ifindex}")
    return dev_ip

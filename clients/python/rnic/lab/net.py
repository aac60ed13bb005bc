"""The lab's network (namespace mode), with pyroute2: a switch namespace holding a bridge, and
per host a namespace whose eth0 is a veth into that bridge. Every veth is made inside the
switch namespace with its peer placed straight into the host's namespace, so the root
namespace's networking is never touched, not even for a moment. `--rate` puts a tbf on both
ends of a host's veth (netem is not available here; delay comes from rnicd's faults)."""
from __future__ import annotations

import os
import re
import shutil

from .paths import LabError

NETNS_DIR = "/var/run/netns"
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
NUD_PERMANENT = 0x80
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?$", re.I)
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
          "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def ns_name(tag: str, host: str) -> str:
    """rnl-<tag>-h3, rnl-<tag>-sw."""
    return f"rnl-{tag}-{host}"


def switch_port(tag: str, k: int) -> str:
    return f"l{tag}h{k}"            # <= 12 characters up to h9999: fits IFNAMSIZ (15)


def mac(tag: str, k: int) -> str:
    """Host k's eth0 address: locally administered, from the lab's tag and k."""
    return f"02:{tag[0:2]}:{tag[2:4]}:{tag[4:6]}:{k >> 8 & 0xff:02x}:{k & 0xff:02x}"


def parse_rate(text: str) -> int:
    """tc's units ('100mbit', '1gbit', '10mbps' = bytes) -> bits per second."""
    m = _RATE.match(text.strip())
    if not m:
        raise LabError(f"bad rate {text!r}: a number with bit, kbit, mbit, gbit (or bps, kbps,"
                       " mbps, gbps for bytes), e.g. 100mbit")
    bits = int(float(m.group(1)) * _UNITS[(m.group(2) or "bit").lower()])
    if not 8000 <= bits <= 32_000_000_000:
        raise LabError(f"rate {text!r} out of range (8kbit .. 32gbit)")
    return bits


def missing() -> str | None:
    """What namespace mode lacks here, said so a person can act on it (None: nothing)."""
    caps = 0
    try:
        with open("/proc/self/status") as f:
            caps = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        pass
    lacking = [n for bit, n in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
               if not caps >> bit & 1]
    if lacking:
        return (f"network namespaces need root (euid {os.geteuid()}, without "
                f"{' and '.join(lacking)}); use --loopback")
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (ip netns exec runs the hosts); " \
               "install iproute2 or use --loopback"
    try:
        import pyroute2  # noqa: F401
    except ImportError as exc:
        return f"pyroute2 is not importable ({exc}); pip install pyroute2 or use --loopback"
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces (CONFIG_NET_NS); use --loopback"
    return None


def namespaces(tag: str) -> list[str]:
    """The lab's namespaces that exist now (leftovers included)."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(f"rnl-{tag}-"))


def build(tag: str, hosts: list[tuple[str, str, int]], mtu: int | None,
          rate_bits: int | None) -> None:
    """hosts: [(host name, address, prefix length)]. Raises LabError; the caller removes a
    half-made network with remove(tag)."""
    from pyroute2 import NetNS, netns
    sw_name = ns_name(tag, "sw")
    try:
        netns.create(sw_name)
        for h, _ip, _plen in hosts:
            netns.create(ns_name(tag, h))
        with NetNS(sw_name) as sw:
            sw.link("add", ifname="br0", kind="bridge")
            br = sw.link_lookup(ifname="br0")[0]
            if mtu:
                sw.link("set", index=br, mtu=mtu)
            sw.link("set", index=br, state="up")
            for h, _ip, _plen in hosts:
                port = switch_port(tag, int(h[1:]))
                sw.link("add", ifname=port, kind="veth",
                        peer={"ifname": "eth0", "net_ns_fd": ns_name(tag, h)})
                idx = sw.link_lookup(ifname=port)[0]
                sw.link("set", index=idx, master=br, **({"mtu": mtu} if mtu else {}))
                sw.link("set", index=idx, state="up")
                if rate_bits:
                    _tbf(sw, idx, rate_bits, mtu or 1500)
        for h, ip, plen in hosts:
            with NetNS(ns_name(tag, h)) as ns:
                idx = ns.link_lookup(ifname="eth0")[0]
                ns.link("set", index=idx, address=mac(tag, int(h[1:])),
                        **({"mtu": mtu} if mtu else {}))
                ns.addr("add", index=idx, address=ip, prefixlen=plen)
                ns.link("set", index=idx, state="up")
                # Permanent neighbours: no ARP. A host's first burst to a peer would otherwise
                # wait in the unresolved queue (unres_qlen_bytes, ~190 frames) and the rest be
                # dropped without an error to the sender (UDP swallows ENOBUFS).
                for peer, peer_ip, _ in hosts:
                    if peer != h:
                        ns.neigh("add", dst=peer_ip, lladdr=mac(tag, int(peer[1:])),
                                 ifindex=idx, state=NUD_PERMANENT)
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                if rate_bits:
                    _tbf(ns, idx, rate_bits, mtu or 1500)
    except LabError:
        raise
    except Exception as exc:        # pyroute2's NetlinkError, OSError, ...
        raise LabError(f"cannot build the lab's network: {exc}") from exc


def _tbf(ipr, index: int, bits: int, mtu: int) -> None:
    """Token bucket at `bits`/s: a burst of 4 ms (at least 3 frames), 50 ms of queue."""
    burst = max(bits // 8 // 250, 3 * (mtu + 64))
    ipr.tc("add", "tbf", index=index, handle="1:", rate=f"{bits}bit", burst=burst,
           latency="50ms")


def remove(tag: str) -> list[str]:
    """Remove the lab's namespaces (their veths and the bridge go with them)."""
    from pyroute2 import netns
    gone = []
    for name in namespaces(tag):
        try:
            netns.remove(name)
            gone.append(name)
        except OSError:
            pass
    return gone

"""What the kernel knows about the network interface a device is bound to (pyroute2): its
addresses (the GID table), link state (the port state) and MTU (the active MTU), followed
live through netlink.

pyroute2's synchronous API runs an event loop of its own, so it is used from a worker
thread (in the daemon's thread a loop is already running); changes reach the daemon's loop
with call_soon_threadsafe.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("rnicd.netif")

IFF_UP, IFF_RUNNING = 0x1, 0x40


@dataclass(frozen=True)
class LinkState:
    ifname: str
    mtu: int
    up: bool                                   # administratively up and carrier on
    addrs: tuple[str, ...] = field(default=())  # IPv4 first, then IPv6, kernel order
    index: int = 0


def _state(ipr, index: int) -> LinkState:
    link = ipr.get_links(index)[0]
    flags = link["flags"]
    v4, v6 = [], []
    for a in ipr.get_addr(index=index):
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        (v4 if a["family"] == 2 else v6).append(addr)
    return LinkState(link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"),
                     bool(flags & IFF_UP and flags & IFF_RUNNING), tuple(v4 + v6), index)


def _index_of(ipr, ip: str) -> int | None:
    for a in ipr.get_addr():
        if ip in (a.get_attr("IFA_ADDRESS"), a.get_attr("IFA_LOCAL")):
            return a["index"]
    return None


def interface_of(ip: str) -> LinkState | None:
    """The interface holding address ip, read once (None if no interface has it)."""
    def read():
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            index = _index_of(ipr, ip)
            return None if index is None else _state(ipr, index)
    with ThreadPoolExecutor(1, thread_name_prefix="netif") as pool:
        try:
            return pool.submit(read).result(timeout=10)
        except Exception as exc:      # pyroute2 raises several types; the defaults serve
            log.warning("cannot read the interface of %s: %s", ip, exc)
            return None


class LinkWatcher:
    """Calls on_change(LinkState) in the loop's thread whenever the interface that held `ip`
    at start changes (addresses, link state, MTU)."""

    def __init__(self, loop, ip: str, on_change):
        self.loop, self.ip, self.on_change = loop, ip, on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlink", daemon=True)
        self._thread.start()

    def _run(self):
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
        try:
            with IPRoute() as ipr:
                # subscribe first (a netlink socket binds once, before its first query), then
                # read: no change can fall between the two
                ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
                index = _index_of(ipr, self.ip)
                if index is None:
                    log.info("no interface holds %s: GID table and port state stay fixed",
                             self.ip)
                    return
                last = _state(ipr, index)
                self.loop.call_soon_threadsafe(self.on_change, last)
                while not self._stop.is_set():
                    if any(m.get("index") == index for m in ipr.get()):
                        state = _state(ipr, index)
                        if state != last:
                            last = state
                            self.loop.call_soon_threadsafe(self.on_change, state)
        except Exception as exc:
            if not self._stop.is_set():
                log.warning("netlink watcher stopped: %s", exc)

    def stop(self):
        self._stop.set()          # the thread ends at its next event, or with the process

"""What the kernel knows about the network interface a device is bound to (pyroute2)."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("rnicd.netif")


def interface_of(ip: str) -> tuple[str, int] | None:
    """(interface name, MTU) of the interface holding address ip, or None. pyroute2's
    synchronous API runs an event loop of its own, so it is asked from a worker thread: in
    the daemon's thread a loop is already running."""
    with ThreadPoolExecutor(1, thread_name_prefix="netif") as pool:
        return pool.submit(_interface_of, ip).result()


def _interface_of(ip: str) -> tuple[str, int] | None:
    try:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for addr in ipr.get_addr(family=2):
                if addr.get_attr("IFA_ADDRESS") == ip or addr.get_attr("IFA_LOCAL") == ip:
                    link = ipr.get_links(addr["index"])[0]
                    return link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU")
    except Exception as exc:          # pyroute2 raises several types; the default MTU serves
        log.warning("cannot read the interface of %s: %s", ip, exc)
    return None

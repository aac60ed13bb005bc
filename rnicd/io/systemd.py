"""systemd integration without libsystemd: sd_notify(3), socket activation (sd_listen_fds(3))
and the service watchdog (sd_watchdog_enabled(3))."""
from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def sd_notify(state: str) -> bool:
    """Send state (e.g. 'READY=1') to $NOTIFY_SOCKET; False when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]          # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(state.encode(), path)
    return True


def _for_us(var: str) -> bool:
    """$LISTEN_PID / $WATCHDOG_PID, when set, must name this process."""
    pid = os.environ.get(var)
    return pid is None or pid == str(os.getpid())


def listen_socket() -> socket.socket | None:
    """The control socket systemd passed (rnicd.socket), or None. Like sd_listen_fds(1), it
    unsets the variables so that children do not inherit them."""
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        n = 0
    ours = n > 0 and "LISTEN_PID" in os.environ and _for_us("LISTEN_PID")
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not ours:
        return None
    if n != 1:
        raise OSError(f"systemd passed {n} sockets; rnicd.socket defines exactly one")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise OSError("the socket systemd passed is not a Unix stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0 or not _for_us("WATCHDOG_PID"):
        return None
    return usec / 2e6

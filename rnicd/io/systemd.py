"""systemd integration: sd_notify(3) without libsystemd."""
import os
import socket


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

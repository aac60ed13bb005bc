"""Waiting for an rnicd process the tests started: ready when its control socket accepts."""
import socket
import time


def wait_ready(proc, sock_path: str, log_path: str, what: str = "rnicd",
               timeout: float = 20.0) -> None:
    """Return once sock_path accepts a connection; RuntimeError with the log's tail if the
    process exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock_path)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout}s:\n{_tail(log_path)}")


def _tail(path: str, n: int = 2000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-n:]

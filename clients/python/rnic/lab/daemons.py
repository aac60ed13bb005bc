"""The lab's rnicd processes: started detached (own session, log file, pid file) so that they
outlive `rnic lab up`, waited for until each serves, found again by their command line (a
daemon whose pid file was never written, after a killed `up`, is found too) and stopped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from .paths import LabError


def argv(host: dict, log_level: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "rnicd.cli", "--bind", host["ip"], "--ctl-socket",
           host["socket"]]
    if host.get("fault"):
        cmd += ["--fault", host["fault"]]
    if log_level:
        cmd += ["--log-level", log_level]
    if host.get("netns"):
        cmd = ["ip", "netns", "exec", host["netns"], *cmd]     # execs: the pid is rnicd's
    return cmd


def start(host: dict, log_level: str | None = None) -> subprocess.Popen:
    """Start one host's rnicd in its own session (no terminal, cwd /) and write its pid file."""
    env = dict(os.environ)
    env.pop("RNIC_SOCKET", None)
    with open(host["log"], "ab") as logf:
        proc = subprocess.Popen(argv(host, log_level), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, cwd="/", env=env,
                                start_new_session=True)
    with open(host["pidfile"], "w") as f:
        f.write(f"{proc.pid}\n")
    host["pid"] = proc.pid
    return proc


def alive(pid: int | None) -> bool:
    """Running (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def serves(sock_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock_path)
        return True
    except OSError:
        return False


def wait_ready(hosts: list[dict], timeout: float) -> None:
    """Return once every host's control socket accepts (rnicd opens it after its UDP port);
    LabError naming the host and its log's tail when one exits or the time runs out."""
    deadline = time.monotonic() + timeout
    waiting = list(hosts)
    while waiting:
        for h in list(waiting):
            if serves(h["socket"]):
                waiting.remove(h)
            elif not alive(h["pid"]):
                raise LabError(f"rnicd of {h['name']} ({h['ip']}) exited:\n{tail(h['log'])}")
        if waiting and time.monotonic() > deadline:
            h = waiting[0]
            raise LabError(f"rnicd of {h['name']} ({h['ip']}) not serving after {timeout:.0f}"
                           f" s ({len(waiting)} hosts waiting):\n{tail(h['log'])}")
        if waiting:
            time.sleep(0.05)


def tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


def find(run_dir: str) -> list[int]:
    """Every process whose command line has `--ctl-socket <run_dir>/...`: the lab's daemons,
    pid files or not."""
    prefix = run_dir.rstrip("/") + "/"
    return _scan(lambda path: path.startswith(prefix))


def find_one(sock_path: str) -> int | None:
    """The daemon serving sock_path, by its command line."""
    return next(iter(_scan(lambda path: path == sock_path)), None)


def _scan(match) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm", "rb") as f:
                if f.read().startswith(b"rnicd-engine"):
                    continue            # a daemon's engine: forked, so same command line
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        for i, a in enumerate(args[:-1]):
            if a == b"--ctl-socket" and match(args[i + 1].decode(errors="replace")):
                if alive(int(d)):
                    found.append(int(d))
                break
    return found


def stop(pids: list[int], procs=(), timeout: float = 10.0) -> None:
    """SIGTERM (rnicd closes every session and removes its socket), SIGKILL after timeout;
    children of this process (procs) are reaped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
    while any(alive(p) for p in pids) and time.monotonic() < deadline + 5:
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    """The child processes of pid (a daemon's are its engines: docs/engines.md)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def proc_stats(pid: int | None) -> dict:
    """CPU seconds (utime + stime) and VmRSS of a running daemon, from /proc."""
    out = {"cpu_s": None, "rss_kib": None}
    if not alive(pid):
        return out
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/status") as f:
            out["rss_kib"] = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        pass
    return out

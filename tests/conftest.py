"""Shared fixtures: real rnicd processes on loopback addresses, uvloop for asyncio tests."""
from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import os
import shutil
import signal
import subprocess
import sys
import sysconfig

import pytest
import uvloop
from daemon_ready import wait_ready

# Daemons and helper processes the tests start import this tree, not an installed copy.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, os.path.join(_ROOT, "clients", "python")]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def _installed_state() -> dict:
    """What `make test`'s set-up installed into this Python: the console scripts and the
    rnicd distribution's metadata."""
    state = {}
    for name in ("rnicd", "rnic"):
        path = os.path.join(sysconfig.get_path("scripts"), name)
        state[path] = (hashlib.sha256(open(path, "rb").read()).hexdigest()
                       if os.path.exists(path) else None)
    try:
        dist = importlib.metadata.distribution("rnicd")
        state["rnicd distribution"] = (dist.version, dist.read_text("RECORD"),
                                       dist.read_text("direct_url.json"))
    except importlib.metadata.PackageNotFoundError:
        state["rnicd distribution"] = None
    return state


@pytest.fixture(scope="session", autouse=True)
def environment_left_as_found():
    """No test changes the environment it runs in (a `make install DESTDIR=...` once removed
    the rnicd and rnic commands): checked once, after the last test."""
    before = _installed_state()
    yield
    after = _installed_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the test run changed the installed rnicd: {sorted(changed)}"


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory):
    """A copy of the project's sources (what a clone has), for tests that build or install
    the package: a build writes build/ and *.egg-info into its tree, and must not write ours."""
    dst = tmp_path_factory.mktemp("src") / "rnicd"
    shutil.copytree(_ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "_native.c",
        ".pytest_cache", ".ruff_cache", "results"))
    return dst


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio 1.x: run every asyncio test on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


# Each daemon gets its own loopback address, so tests never collide with each other, with
# a concurrent test run (second octet from the pid) or with `make run` on 127.0.0.1.
_addresses = (f"127.{20 + os.getpid() % 200}.{a}.{b}" for a in itertools.count(1)
              for b in range(1, 255))


def next_address() -> str:
    """A loopback address no other daemon of this run has."""
    return next(_addresses)


class DaemonProcess:
    def __init__(self, tmp_path, name, fault=None, extra=()):
        self.ip = next_address()
        self.socket = str(tmp_path / f"{name}.sock")
        self.log_path = tmp_path / f"{name}.log"
        args = [sys.executable, "-m", "rnicd.cli", "--bind", self.ip, "--ctl-socket",
                self.socket, "--log-level", "info", *extra]
        if os.environ.get("RNIC_TEST_ENGINES") and "--engines" not in extra:
            args += ["--engines", os.environ["RNIC_TEST_ENGINES"]]    # test_engines.py
        if fault:
            args += ["--fault", fault]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.log.flush()
        wait_ready(self.proc, self.socket, str(self.log_path))

    def read_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def engine_pids(self) -> list[int]:
        """The daemon's engine processes (its children, docs/engines.md)."""
        from rnic.lab.daemons import children
        return children(self.proc.pid)

    def signal_host(self, sig) -> None:
        """Signal the daemon and its engines: the whole emulated host (SIGSTOP: it stops
        answering)."""
        for pid in [self.proc.pid, *self.engine_pids()]:
            os.kill(pid, sig)

    def stop(self, timeout=10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def tshark():
    """The tshark executable, an independent dissector; skips (printing why) without it."""
    exe = shutil.which("tshark")
    if exe is None:
        msg = "tshark not installed; make sysdeps installs it"
        print(msg)
        pytest.skip(msg)
    return exe


@pytest.fixture
def rnicd(tmp_path):
    """Factory: rnicd(name, fault=None) -> DaemonProcess; all are stopped afterwards."""
    started = []

    def start(name="d", fault=None, extra=()):
        d = DaemonProcess(tmp_path, f"{name}{len(started)}", fault, extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def two_daemons(rnicd):
    return rnicd("a"), rnicd("b")

"""Shared fixtures: real rnicd processes on loopback addresses, uvloop for asyncio tests."""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys

import pytest
import uvloop
from daemon_ready import wait_ready

# Daemons and helper processes the tests start import this tree, not an installed copy.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, os.path.join(_ROOT, "clients", "python")]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio 1.x: run every asyncio test on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


# Each daemon gets its own loopback address, so tests never collide with each other, with
# a concurrent test run (second octet from the pid) or with `make run` on 127.0.0.1.
_addresses = (f"127.{20 + os.getpid() % 200}.{a}.{b}" for a in itertools.count(1)
              for b in range(1, 255))


class DaemonProcess:
    def __init__(self, tmp_path, name, fault=None, extra=()):
        self.ip = next(_addresses)
        self.socket = str(tmp_path / f"{name}.sock")
        self.log_path = tmp_path / f"{name}.log"
        args = [sys.executable, "-m", "rnicd.cli", "--bind", self.ip, "--ctl-socket",
                self.socket, "--log-level", "info", *extra]
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

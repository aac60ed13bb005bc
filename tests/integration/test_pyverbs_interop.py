"""Debian's pyverbs (rdma-core's own Python binding, compiled against libibverbs) on rnicd's C
library, talking to the `rnic` Python client on another daemon: an RC QP pair exchanges RDMA
WRITE (64 KiB), SEND (4 KiB) and RDMA WRITE with immediate (1 KiB) in both directions, and
each side checks every completion (status, opcode, byte_len, the immediate) and the bytes that
arrived, by SHA-256 against what the other side was given to send (issue 12's acceptance).

The two sides are tests/integration/interop_peer.py: `rnic exec --socket A -- /usr/bin/python3
interop_peer.py pyverbs` on daemon A and `python interop_peer.py rnic` with RNIC_SOCKET=B;
this test relays the QP number, GID, PSN, buffer address and rkey between them over JSON lines.
"""
import base64
import hashlib
import json
import os
import queue
import random
import subprocess
import sys
import threading

import pytest
from clibs import need_clib, rnic_exec
from rnic import clib

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "interop_peer.py")
SYSTEM_PYTHON = "/usr/bin/python3"
REAL_PYVERBS = "/usr/lib/python3/dist-packages/pyverbs"
TIMEOUT = 60


@pytest.fixture(scope="module")
def real_pyverbs():
    need_clib()
    if not os.path.isdir(REAL_PYVERBS) or not os.access(SYSTEM_PYTHON, os.X_OK):
        why = f"Debian's python3-pyverbs is not installed ({REAL_PYVERBS}; make sysdeps)"
        print(why)
        pytest.skip(why)


class Peer:
    """A peer process and a thread reading its JSON lines (stderr kept for the report)."""

    def __init__(self, name, cmd, env):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for ln in self.proc.stdout:
            self.lines.put(ln)
        self.lines.put(None)

    def send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self, key):
        try:
            ln = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            ln = None
        if ln is None:
            self.proc.kill()
            raise AssertionError(f"{self.name} said nothing while we waited for {key!r}: "
                                 f"{self.proc.stderr.read()[-3000:]}")
        msg = json.loads(ln)
        assert key in msg, (self.name, msg)
        return msg[key]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        return self.proc.returncode, err


def payloads(rng):
    return {"write": rng.randbytes(64 * 1024), "send": rng.randbytes(4096),
            "wimm": rng.randbytes(1024), "imm": rng.getrandbits(32)}


def sent(p):
    return {"write": base64.b64encode(p["write"]).decode(),
            "send": base64.b64encode(p["send"]).decode(),
            "wimm": base64.b64encode(p["wimm"]).decode(), "imm": p["imm"]}


def expect(p):
    return {"write": hashlib.sha256(p["write"]).hexdigest(),
            "send": hashlib.sha256(p["send"]).hexdigest(), "send_len": len(p["send"]),
            "wimm": hashlib.sha256(p["wimm"]).hexdigest(), "wimm_len": len(p["wimm"]),
            "imm": p["imm"]}


@pytest.mark.timeout(180)
def test_pyverbs_and_rnic_exchange_write_and_send_both_ways(real_pyverbs, rnicd):
    a, b = rnicd("a"), rnicd("b")
    # rnic exec runs with this interpreter (it needs rnic); Debian's python3 with -I
    # (isolated: PYTHONPATH and the user site ignored) imports Debian's pyverbs only
    cmd_a = rnic_exec(a.socket, SYSTEM_PYTHON, "-I", PEER, "pyverbs")
    pv = Peer("pyverbs", cmd_a, dict(os.environ))
    rn = Peer("rnic", [sys.executable, PEER, "rnic"], dict(os.environ, RNIC_SOCKET=b.socket))
    try:
        rng = random.Random(int.from_bytes(os.urandom(8), "little"))
        to_rnic, to_pyverbs = payloads(rng), payloads(rng)   # what each side is sent
        h_pv, h_rn = pv.recv("hello"), rn.recv("hello")
        # the pyverbs side really is Debian's pyverbs on our libibverbs.so.1
        assert h_pv["binding"].startswith(REAL_PYVERBS), h_pv
        assert h_pv["libibverbs"] == os.path.realpath(
            os.path.join(clib.libdir(), "libibverbs.so.1")), h_pv
        assert "clients/python/rnic" in h_rn["binding"], h_rn
        pv.send({"peer": h_rn, "send": sent(to_rnic), "expect": expect(to_pyverbs)})
        rn.send({"peer": h_pv, "send": sent(to_pyverbs), "expect": expect(to_rnic)})
        assert pv.recv("ready") and rn.recv("ready")
        pv.send({"go": True})
        rn.send({"go": True})
        r_pv, r_rn = pv.recv("result"), rn.recv("result")
        pv.send({"bye": True})
        rn.send({"bye": True})
    finally:
        (rc_pv, err_pv), (rc_rn, err_rn) = pv.close(), rn.close()
    assert r_pv["errors"] == [], ("pyverbs side", r_pv, err_pv)
    assert r_rn["errors"] == [], ("rnic side", r_rn, err_rn)
    # the test's own check of what each side reports it received
    assert r_pv["got"] == {k: v for k, v in expect(to_pyverbs).items()
                           if k in ("write", "send", "wimm", "imm")}
    assert r_rn["got"] == {k: v for k, v in expect(to_rnic).items()
                           if k in ("write", "send", "wimm", "imm")}
    assert (rc_pv, rc_rn) == (0, 0), (err_pv, err_rn)

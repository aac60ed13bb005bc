"""`rnic lab` in namespace mode, as a user runs it: up 3, rnic ping, unmodified rping and
ib_write_bw between hosts, down leaving the machine as before; a fault on one host; a killed
`up`; --rate and --mtu. Skips, saying why, where namespaces cannot be made."""
import json
import os
import subprocess
import tempfile
import time
import uuid

import pytest
from clibs import need_clib
from lab_cli import (
    kill_up_midway,
    lab,
    lab_popen,
    left_as_before,
    machine,
    ping_between,
    status,
    unmodified_programs,
)
from rnic.lab.net import missing

PORT = 19800 + os.getpid() % 200 * 2


@pytest.fixture
def root():
    why = missing()
    if why:
        print(f"SKIP netns: {why}")
        pytest.skip(why)
    d = tempfile.mkdtemp(prefix="rl")
    yield d
    for name in os.listdir(d) if os.path.isdir(d) else []:
        lab(d, "down", "--name", name, check=False)
    os.rmdir(d)


def name() -> str:
    return f"n{uuid.uuid4().hex[:6]}"


def test_up_ping_rping_ib_write_bw_down(root):
    before = machine(root)
    n = name()
    up = lab(root, "up", "3", "--name", n)
    assert "3 hosts (netns" in up.stdout
    st = status(root, n)
    ips = [h["ip"] for h in st["hosts"]]
    assert all(h["alive"] and h["serving"] for h in st["hosts"])
    assert len(machine(root)["netns"]) == len(before["netns"]) + 4       # 3 hosts + switch
    ping_between(root, n, "h1", "h2", ips[0], PORT)
    r = lab(root, "exec", "--name", n, "all", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert sorted(ln.split()[0] + ln.split()[4] for ln in r.stdout.splitlines()) == \
        [f"h{i}:{ip}/16" for i, ip in enumerate(ips, 1)]
    try:
        need_clib("rping", "ib_write_bw")
    except pytest.skip.Exception:
        lab(root, "down", "--name", n)
        raise
    unmodified_programs(root, n, "h1", "h3", ips[0], PORT + 1)
    lab(root, "down", "--name", n)
    left_as_before(root, before)


def test_fault_on_h2_is_retransmitted_and_counted_only_there(root):
    n = name()
    lab(root, "up", "3", "--name", n, "--fault", "h2=drop=0.05,seed=5")
    ips = [h["ip"] for h in status(root, n)["hosts"]]
    ping_between(root, n, "h2", "h1", ips[1], PORT)            # h1 -> h2 -> h1
    srv = lab_popen(root, "exec", "--name", n, "h1", "--", "rnic", "perf", "write_bw", "-p",
                    str(PORT + 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        r = lab(root, "exec", "--name", n, "h2", "--", "rnic", "perf", "write_bw", ips[0],
                "-p", str(PORT + 1), "-s", "65536", "-n", "300", "--json")
        assert json.loads(r.stdout.splitlines()[-1])["iterations"] == 300
        assert srv.wait(30) == 0, srv.stderr.read()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    st = status(root, n)
    drops = {h["name"]: h["counters"].get("fault_drop", 0) for h in st["hosts"]}
    assert drops["h2"] > 0 and drops["h1"] == drops["h3"] == 0, drops
    assert st["hosts"][1]["counters"]["retransmitted_pkts"] > 0


def test_killed_up_then_up_again_leaves_no_orphans(root):
    before = machine(root)
    n = name()

    def namespaces_made(root, name):                    # network built, daemons not ready
        d = os.path.join(root, name)
        return os.path.isdir(d) and any(f.endswith(".pid") for f in os.listdir(d))

    kill_up_midway(root, n, 4, namespaces_made)
    half = machine(root)
    assert len(half["netns"]) == len(before["netns"]) + 5, "nothing half-made to clear"
    r = lab(root, "up", "4", "--name", n)
    assert f"cleared leftovers of lab '{n}'" in r.stderr
    assert len(machine(root)["daemons"]) == 4
    lab(root, "down", "--name", n)
    left_as_before(root, before)


def test_rate_and_mtu_on_every_link(root):
    n = name()
    lab(root, "up", "2", "--name", n, "--rate", "200mbit", "--mtu", "4200")
    r = lab(root, "exec", "--name", n, "h1", "--", "tc", "qdisc", "show", "dev", "eth0")
    assert "tbf" in r.stdout and "rate 200Mbit" in r.stdout, r.stdout
    r = lab(root, "exec", "--name", n, "h2", "--", "ip", "-o", "link", "show", "eth0")
    assert "mtu 4200" in r.stdout
    ips = [h["ip"] for h in status(root, n)["hosts"]]
    ping_between(root, n, "h2", "h1", ips[1], PORT)

"""`rnic lab` in loopback mode (no namespaces, any user): up, exec, status, down, faults per
host, a killed `up`, all-to-all RC with SHA-256, and the namespace mode's error for a user
without the privileges."""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from clibs import need_clib
from lab_cli import (
    kill_up_midway,
    lab,
    left_as_before,
    machine,
    ping_between,
    status,
    unmodified_programs,
)
from rnic.lab import Lab, LabError
from rnic.lab.traffic import all_to_all, rounds

PORT = 19600 + os.getpid() % 200 * 2


@pytest.fixture
def root():
    """A run root of our own (RNIC_LAB_DIR): short, so socket paths stay short."""
    d = tempfile.mkdtemp(prefix="rl")
    yield d
    for name in os.listdir(d) if os.path.isdir(d) else []:
        lab(d, "down", "--name", name, check=False)
    shutil.rmtree(d, ignore_errors=True)


def subnet(k: int) -> str:
    return f"127.78.{(os.getpid() + k) % 250 + 1}.0/24"


def test_up_exec_ping_status_down(root):
    before = machine(root)
    up = lab(root, "up", "3", "--loopback", "--name", "t", "--subnet", subnet(0))
    assert "3 hosts (loopback" in up.stdout
    st = status(root, "t")
    assert [h["name"] for h in st["hosts"]] == ["h1", "h2", "h3"]
    assert all(h["alive"] and h["serving"] and h["objects"]["qps"] == 0 for h in st["hosts"])
    ips = [h["ip"] for h in st["hosts"]]
    assert ips == [subnet(0).replace(".0/24", f".{i}") for i in (1, 2, 3)]
    out = ping_between(root, "t", "h1", "h2", ips[0], PORT)
    assert f"20 iterations of 4096 bytes verified with {ips[0]}:{PORT}" in out
    r = lab(root, "exec", "--name", "t", "all", "--", "sh", "-c", "echo $RNIC_SOCKET",
            check=False)
    assert r.returncode == 0
    assert sorted(r.stdout.splitlines()) == [f"h{i}: {root}/t/h{i}.sock" for i in (1, 2, 3)]
    r = lab(root, "exec", "--name", "t", "h2", "--", "sh", "-c", "exit 7", check=False)
    assert r.returncode == 7                                         # the program's status
    r = lab(root, "exec", "--name", "t", "all", "--", "sh", "-c",
            'test "$RNIC_SOCKET" != "$0"', f"{root}/t/h2.sock", check=False)
    assert r.returncode == 1 and "failed on h2 (exit 1)" in r.stderr
    r = lab(root, "exec", "--name", "t", "h9", "--", "true", check=False)
    assert r.returncode == 1 and "no host 'h9'" in r.stderr
    assert "lab t: down (3 daemons stopped" in lab(root, "down", "--name", "t").stdout
    left_as_before(root, before)
    assert "no lab 't'" in lab(root, "status", "--name", "t", check=False).stderr


def test_unmodified_rping_and_ib_write_bw(root):
    need_clib("rping", "ib_write_bw")
    lab(root, "up", "2", "--loopback", "--name", "c", "--subnet", subnet(1))
    st = status(root, "c")
    unmodified_programs(root, "c", "h1", "h2", st["hosts"][0]["ip"], PORT + 1)


def test_fault_on_one_host_shows_only_there(root):
    lab(root, "up", "3", "--loopback", "--name", "f", "--subnet", subnet(2),
        "--fault", "h2=drop=0.05,seed=3")
    lab_ = Lab.attach("f", root)
    r = all_to_all(lab_.hosts[:2], 256 << 10)          # h1 <-> h2 only, both ways
    assert r["ok"], r
    st = status(root, "f")
    drops = {h["name"]: h["counters"].get("fault_drop", 0) for h in st["hosts"]}
    assert drops["h2"] > 0 and drops["h1"] == drops["h3"] == 0, drops
    assert st["hosts"][1]["counters"]["retransmitted_pkts"] > 0    # h2 resent what it dropped
    assert [h["fault"] for h in st["hosts"]] == [None, "drop=0.05,seed=3", None]


def test_killed_up_then_up_again_leaves_nothing(root):
    before = machine(root)

    def daemons_started(root, name):
        d = os.path.join(root, name)
        return os.path.isdir(d) and sum(f.endswith(".pid") for f in os.listdir(d)) >= 2

    kill_up_midway(root, "k", 4, daemons_started, "--loopback", "--subnet", subnet(3))
    assert machine(root)["daemons"], "the killed up left no daemon: nothing was tested"
    r = lab(root, "up", "4", "--loopback", "--name", "k", "--subnet", subnet(3))
    assert "cleared leftovers of lab 'k'" in r.stderr
    assert len(machine(root)["daemons"]) == 4
    lab(root, "down", "--name", "k")
    left_as_before(root, before)


def test_two_labs_side_by_side_and_all_to_all_with_sha256(root):
    with Lab(4, "a", loopback=True, root=root, subnet=subnet(4)) as a, \
            Lab(2, "b", loopback=True, root=root, subnet=subnet(5)) as b:
        assert {h.ip for h in a.hosts}.isdisjoint(h.ip for h in b.hosts)
        r = all_to_all(a.hosts, 1 << 20)
        assert r["ok"] and r["connections"] == 12 and r["bytes"] == 24 << 20, r
        assert all_to_all(b.hosts, 64 << 10)["ok"]
        got = a.hosts[1].run(sys.executable, "-c", "import os; print(os.environ['RNIC_SOCKET'])",
                             capture_output=True, text=True, check=True).stdout.strip()
        assert got == a.hosts[1].socket
    assert not machine(root)["daemons"] and os.listdir(root) == []


def test_round_robin_meets_every_pair_once():
    for n in (2, 3, 4, 7, 64):
        seen = [frozenset(p) for r in rounds(n) for p in r]
        assert len(seen) == len(set(seen)) == n * (n - 1) // 2
        assert all(len({x for p in r for x in p}) == 2 * len(r) for r in rounds(n))


def test_bad_arguments_say_what_is_wrong(root):
    for args, msg in ((["up", "2", "--loopback", "--fault", "h3=drop=0.1"], "no host h3"),
                      (["up", "2", "--loopback", "--fault", "drop=2"], "between 0 and 1"),
                      (["up", "2", "--loopback", "--subnet", "10.1.0.0/24"], "127.0.0.0/8"),
                      (["up", "2", "--loopback", "--rate", "100mbit"], "namespace mode"),
                      (["up", "300", "--loopback", "--subnet", "127.9.9.0/24"], "room for 254"),
                      (["up", "2", "--name", "../x"], "bad lab name")):
        r = lab(root, *args, check=False)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr)
    with pytest.raises(LabError, match="bad rate"):
        Lab(2, "x", rate="fast", root=root)


def test_namespace_mode_without_privileges_says_what_is_missing(root):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    os.chmod(root, 0o777)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-m", "rnic.tool", "lab", "up", "2"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, RNIC_LAB_DIR=root, HOME="/"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "network namespaces need root (euid 65534" in r.stderr and "--loopback" in r.stderr

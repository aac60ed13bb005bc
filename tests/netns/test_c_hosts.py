"""Unmodified Debian RDMA programs on rnicd's C libraries between two hosts in network
namespaces (an `rnic.lab` lab, the programs run through `rnic exec`): issue 12's list —
ibv_devices, ibv_devinfo -v, the four ibv_*_pingpong, every perftest tool over verbs and over
rdma_cm (-R), rping -v -V -C 100 (its data checked), ucmatose, udaddy, rdma_server/client.
Skips, saying why, without namespaces, the libraries or the Debian programs."""
import itertools
import os
import subprocess
import uuid

import pytest
from clibs import (
    cm_listening,
    need_clib,
    perftest_cm_runs,
    rnic_exec,
    server_then_client,
    tcp_listening,
)
from rnic.lab import Lab, LabError
from rnic.lab.net import missing

TIMEOUT = 90
_ports = itertools.count(19000 + os.getpid() % 500 * 40)
PERFTEST = ["ib_write_bw", "ib_read_bw", "ib_send_bw", "ib_atomic_bw", "ib_write_lat",
            "ib_send_lat", "ib_read_lat"]


@pytest.fixture(scope="module")
def pair():
    """Two lab hosts for the whole module (building namespaces per test costs seconds)."""
    reason = missing()
    if reason:
        print(f"SKIP netns: {reason}")
        pytest.skip(reason)
    lab = Lab(2, f"pytest-c-{uuid.uuid4().hex[:6]}")
    try:
        lab.up()
    except LabError as exc:
        lab.down()
        print(f"SKIP netns: cannot build the lab here: {exc}")
        pytest.skip(f"cannot build network namespaces here: {exc}")
    yield lab.hosts
    lab.down()


def exec_on(host, *cmd):
    """cmd inside host's namespace, on host's rnicd, through `rnic exec`."""
    return host.argv(*rnic_exec(host.socket, *cmd))


def server_client(server, client, server_cmd, client_cmd, tcp_port=None, cm_port=None):
    """The server on one host, then, once it listens (its TCP port, or rdma_cm's port in
    rnicd), the client on the other: (client, server exit code, server output)."""
    def ready(srv):
        if tcp_port is not None:
            return tcp_listening(srv.pid, tcp_port)
        return cm_port in cm_listening(server.socket)
    return server_then_client(exec_on(server, *server_cmd), exec_on(client, *client_cmd), ready,
                              timeout=TIMEOUT)


def test_device_tools(pair):
    need_clib("ibv_devices", "ibv_devinfo")
    a, _ = pair
    out = subprocess.run(exec_on(a, "ibv_devices"), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0 and "rnic0" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(exec_on(a, "ibv_devinfo", "-v"), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PORT_ACTIVE" in out.stdout and f"::ffff:{a.ip}, RoCE v2" in out.stdout, out.stdout


@pytest.mark.parametrize("kind,reverse", [("rc", False), ("rc", True), ("uc", False),
                                          ("ud", False), ("srq", False)],
                         ids=["rc", "rc-reverse", "uc", "ud", "srq"])
def test_pingpong(pair, kind, reverse):
    prog = f"ibv_{kind}_pingpong"
    need_clib(prog)
    server, client = pair[::-1] if reverse else pair
    port = next(_ports)
    args = ["-d", "rnic0", "-g", "0", "-p", str(port), "-n", "100"]
    cl, src, sout = server_client(server, client, [prog, *args], [prog, *args, server.ip],
                                  tcp_port=port)
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    assert "100 iters in" in cl.stdout and "100 iters in" in sout


@pytest.mark.parametrize("cm", [False, True], ids=["verbs", "rdma_cm"])
@pytest.mark.parametrize("prog", PERFTEST)
def test_perftest(pair, prog, cm):
    need_clib(prog)
    a, b = pair
    port = next(_ports)
    args = ["-d", "rnic0", "-p", str(port), "-n", "100", *(["-R"] if cm else ["-x", "0"])]
    cl, src, sout = perftest_cm_runs(lambda: server_client(
        a, b, [prog, *args], [prog, *args, a.ip], tcp_port=None if cm else port,
        cm_port=port if cm else None))
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    size = "8" if "atomic" in prog else "2" if prog.endswith("lat") else "65536"
    rows = [ln.split() for ln in cl.stdout.splitlines() if ln.split()[:1] == [size]]
    assert len(rows) == 1 and float(rows[0][-1]) > 0, cl.stdout


def test_rping(pair):
    """rping -v -V -C 100: every ping's data, which the server RDMA READ from the client and
    RDMA WROTE back, is rping's pattern (and -V compared it with what was sent)."""
    need_clib("rping")
    a, b = pair
    port = str(next(_ports))
    cl, src, sout = server_client(a, b, ["rping", "-s", "-a", a.ip, "-p", port, "-V"],
                                  ["rping", "-c", "-a", a.ip, "-p", port, "-v", "-V", "-C",
                                   "100"], cm_port=int(port))
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    lines = [ln for ln in cl.stdout.splitlines() if ln.startswith("ping data: ")]
    assert len(lines) == 100, cl.stdout
    for i, ln in enumerate(lines):
        assert ln.startswith(f"ping data: rdma-ping-{i}: "), ln


def test_ucmatose(pair):
    need_clib("ucmatose")
    a, b = pair
    port = str(next(_ports))
    cl, src, sout = server_client(a, b, ["ucmatose", "-p", port],
                                  ["ucmatose", "-s", a.ip, "-p", port], cm_port=int(port))
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    assert "data transfers complete" in cl.stdout and "data transfers complete" in sout


def test_udaddy(pair):
    need_clib("udaddy")
    a, b = pair
    cl, src, sout = server_client(a, b, ["udaddy"], ["udaddy", "-s", a.ip], cm_port=7174)
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    assert "data transfers complete" in cl.stdout and "data transfers complete" in sout


def test_rdma_server_client(pair):
    need_clib("rdma_server", "rdma_client")
    a, b = pair
    port = str(next(_ports))
    cl, src, sout = server_client(a, b, ["rdma_server", "-p", port],
                                  ["rdma_client", "-s", a.ip, "-p", port], cm_port=int(port))
    assert cl.returncode == 0 and "rdma_client: end 0" in cl.stdout, cl.stdout + cl.stderr
    assert src == 0 and "rdma_server: end 0" in sout, sout

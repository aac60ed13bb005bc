"""`rnic lab` as a user runs it, for tests/integration/test_lab.py (loopback) and
tests/netns/test_lab.py (namespaces): the command, what the machine looks like around a lab,
and the programs the acceptance runs between two hosts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from clibs import cm_listening, server_then_client, tcp_listening
from rnic.lab import Lab
from rnic.lab.daemons import find

RPING_PORT = 7174      # rping's default port


def env(root: str) -> dict:
    return dict(os.environ, RNIC_LAB_DIR=root)


def lab(root: str, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "rnic.tool", "lab", *args], env=env(root),
                       capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, f"rnic lab {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def lab_popen(root: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rnic.tool", "lab", *args], env=env(root),
                            **kw)


def status(root: str, name: str) -> dict:
    return json.loads(lab(root, "status", "--name", name, "--json").stdout)


def machine(root: str) -> dict:
    """What a lab may leave behind: namespaces, links, daemons under root, files under root,
    /dev/shm."""
    def out(*cmd):
        if shutil.which(cmd[0]) is None:
            return None
        return sorted(subprocess.run(cmd, capture_output=True, text=True).stdout.split("\n"))
    links = out("ip", "-o", "link")
    return {"netns": out("ip", "netns", "list"),
            "links": links and sorted(ln.split(":")[1].strip() for ln in links if ":" in ln),
            "daemons": find(root),
            "run_root": sorted(os.listdir(root)) if os.path.isdir(root) else None,
            "shm": sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else None}


def left_as_before(root: str, before: dict) -> None:
    """Namespaces, links, daemons and the run root as before; no new rnic entry in /dev/shm
    (other engineers' programs may make their own meanwhile)."""
    now = machine(root)
    for k in before:
        if k != "shm":
            assert now[k] == before[k], f"{k}: {before[k]} -> {now[k]}"
    new = set(now["shm"] or []) - set(before["shm"] or [])
    assert not [s for s in new if "rnic" in s.lower()], new


def ping_between(root: str, name: str, server: str, client: str, server_ip: str,
                 port: int = 7174) -> str:
    """`rnic lab exec SERVER -- rnic ping -s` in the background, then the client: its output."""
    srv = lab_popen(root, "exec", "--name", name, server, "--", "rnic", "ping", "-s", "-p",
                    str(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = srv.stdout.readline()
        assert "listening on" in first, first + srv.stderr.read()
        r = lab(root, "exec", "--name", name, client, "--", "rnic", "ping", "-c", "-a",
                server_ip, "-p", str(port), "-C", "20", "-S", "4096", "-v", timeout=90)
        assert r.stdout.count("ping data: rnic-ping: ") == 20, r.stdout
        assert srv.wait(30) == 0, srv.stderr.read()
        return r.stdout
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def server_client(root: str, name: str, server: str, client: str, server_cmd, client_cmd,
                  ready, timeout: float = 90):
    """An unmodified program's server on one host, then (once ready(server process)) its
    client on another, both through `rnic lab exec`."""
    def argv(host, cmd):
        return [sys.executable, "-m", "rnic.tool", "lab", "exec", "--name", name, host, "--",
                *cmd]
    return server_then_client(argv(server, server_cmd), argv(client, client_cmd), ready,
                              timeout=timeout, env=env(root))


def unmodified_programs(root: str, name: str, a: str, b: str, a_ip: str, port: int) -> None:
    """rping (-C 10, verified) and ib_write_bw from host b to host a, through `rnic lab exec`."""
    a_socket = Lab.attach(name, root).host(a).socket
    cl, src, sout = server_client(root, name, a, b, ["rping", "-s", "-a", a_ip, "-C", "10"],
                                  ["rping", "-c", "-a", a_ip, "-v", "-C", "10"],
                                  lambda srv: RPING_PORT in cm_listening(a_socket))
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    assert cl.stdout.count("ping data: rdma-ping-") == 10, cl.stdout
    args = ["-d", "rnic0", "-x", "0", "-p", str(port), "-n", "200"]
    cl, src, sout = server_client(root, name, a, b, ["ib_write_bw", *args],
                                  ["ib_write_bw", *args, a_ip],
                                  lambda srv: tcp_listening(srv.pid, port))
    assert cl.returncode == 0 and src == 0, cl.stdout + cl.stderr + sout
    assert any(ln.split()[:1] == ["65536"] for ln in cl.stdout.splitlines()), cl.stdout


def kill_up_midway(root: str, name: str, n: int, ready, *up_args) -> None:
    """Start `rnic lab up n`, SIGKILL it once ready(root, name) holds (and before it returns)."""
    p = lab_popen(root, "up", str(n), "--name", name, *up_args, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready(root, name):
        assert p.poll() is None, f"up returned before it could be killed: {p.communicate()}"
        assert time.monotonic() < deadline, "the lab never got half-made"
        time.sleep(0.005)
    p.kill()
    p.wait()
    assert p.returncode == -9

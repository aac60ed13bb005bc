"""Hosts in network namespaces: N namespaces joined by a bridge in a "switch" namespace
(veth pairs, built with pyroute2), rnicd running in each. Everything is torn down even when
a test fails; the fixture skips, printing why, where namespaces cannot be made."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
from daemon_ready import wait_ready

SUBNET = "10.77.{}.{}"      # addresses of our own test hosts, inside our own namespaces


@dataclass
class Host:
    name: str          # network namespace
    ip: str
    socket: str        # rnicd's control socket (the filesystem is shared)
    proc: subprocess.Popen
    log: str

    def run(self, *argv, **kw) -> subprocess.CompletedProcess:
        """Run a command inside this host's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kw)

    def popen(self, *argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        import pyroute2  # noqa: F401
    except ImportError as exc:
        return f"pyroute2 not importable: {exc}"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (ip) not installed"
    return None


class Network:
    def __init__(self, tmp_path, n: int):
        self.tmp_path = tmp_path
        self.tag = tag = uuid.uuid4().hex[:6]
        self.switch = f"rsw-{tag}"
        self.names = [f"rh{i}-{tag}" for i in range(n)]
        self.hosts: list[Host] = []
        self.subnet = int(tag[:2], 16) % 200 + 20

    def build(self):
        from pyroute2 import IPRoute, NetNS, netns
        tag, tmp_path = self.tag, self.tmp_path
        netns.create(self.switch)
        for name in self.names:
            netns.create(name)
        with NetNS(self.switch) as sw:
            sw.link("add", ifname="br0", kind="bridge")
            sw.link("set", index=sw.link_lookup(ifname="br0")[0], state="up")
        with IPRoute() as root:
            for i, name in enumerate(self.names):
                host_if, sw_if = f"rv{i}h{tag}"[:15], f"rv{i}s{tag}"[:15]
                root.link("add", ifname=host_if, kind="veth", peer=sw_if)
                root.link("set", index=root.link_lookup(ifname=host_if)[0], net_ns_fd=name)
                root.link("set", index=root.link_lookup(ifname=sw_if)[0],
                          net_ns_fd=self.switch)
                with NetNS(self.switch) as sw:
                    idx = sw.link_lookup(ifname=sw_if)[0]
                    sw.link("set", index=idx, master=sw.link_lookup(ifname="br0")[0])
                    sw.link("set", index=idx, state="up")
                with NetNS(name) as ns:
                    idx = ns.link_lookup(ifname=host_if)[0]
                    ns.link("set", index=idx, ifname="eth0")
                    ns.addr("add", index=idx, address=SUBNET.format(self.subnet, i + 1),
                            prefixlen=24)
                    ns.link("set", index=idx, state="up")
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        for i, name in enumerate(self.names):
            ip = SUBNET.format(self.subnet, i + 1)
            sock = str(tmp_path / f"{name}.sock")
            log = str(tmp_path / f"{name}.log")
            with open(log, "w") as f:
                proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-m",
                                         "rnicd.cli", "--bind", ip, "--ctl-socket", sock],
                                        stdout=f, stderr=subprocess.STDOUT)
            self.hosts.append(Host(name, ip, sock, proc, log))
        for h in self.hosts:
            wait_ready(h.proc, h.socket, h.log, f"rnicd in {h.name}")

    def close(self):
        from pyroute2 import netns
        for h in self.hosts:
            if h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for h in self.hosts:
            try:
                h.proc.wait(10)
            except subprocess.TimeoutExpired:
                h.proc.kill()
        for name in [*self.names, self.switch]:
            try:
                netns.remove(name)             # removing a namespace removes its veth ends
            except OSError:
                pass


@pytest.fixture
def hosts(tmp_path, request):
    """hosts(n) -> [Host, ...]: n hosts on one bridged subnet, rnicd in each."""
    reason = _skip_reason()
    if reason:
        print(f"SKIP netns: {reason}")
        pytest.skip(reason)
    nets = []

    def make(n: int = 3) -> list[Host]:
        net = Network(tmp_path, n)
        nets.append(net)              # registered first: teardown removes whatever was made
        try:
            net.build()
        except OSError as exc:
            print(f"SKIP netns: cannot build namespaces here: {exc}")
            pytest.skip(f"cannot build network namespaces here: {exc}")
        return net.hosts

    yield make
    for net in nets:
        net.close()

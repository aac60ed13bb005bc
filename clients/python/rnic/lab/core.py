"""rnic.lab.Lab: N hosts, each with its own rnicd, in network namespaces on one bridge (or,
unprivileged, on 127.x loopback addresses), made and removed as one thing.

    with Lab(3) as lab:
        h1, h2 = lab.hosts[:2]
        h1.popen("rnic", "ping", "-s")
        h2.run("rnic", "ping", "-c", "-a", h1.ip, check=True)
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time

from . import daemons, net
from .paths import LabError, check_name, lab_dir, list_labs, load_state, run_root, save_state
from .paths import tag as lab_tag

NETNS_SUBNET = "10.77.0.0/16"
LOOPBACK_SUBNET = "127.77.{}.0/24"


class Host:
    """One host: .name (h1..hN), .ip, .socket (its rnicd's control socket), .netns (None in
    loopback mode), .pid and .proc (the Popen when this process started the daemon), .log."""

    def __init__(self, rec: dict, proc: subprocess.Popen | None = None):
        self.rec = rec
        self.name, self.ip, self.socket = rec["name"], rec["ip"], rec["socket"]
        self.netns, self.log, self.fault = rec.get("netns"), rec["log"], rec.get("fault")
        self.proc = proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.rec.get("pid")

    def __repr__(self):
        return f"<Host {self.name} {self.ip} netns={self.netns} pid={self.pid}>"

    def argv(self, *cmd) -> list[str]:
        """cmd as run inside this host (ip netns exec NS ... in namespace mode)."""
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else list(cmd)

    def env(self, base: dict | None = None, clib: bool = False) -> dict:
        """RNIC_SOCKET naming this host's rnicd, the Python environment's bin first on PATH
        (so `rnic` is found), and with clib rnicd's C libraries first on LD_LIBRARY_PATH (as
        `rnic exec` does: unmodified programs use this host's device)."""
        from rnic import clib as _clib
        env = dict(os.environ if base is None else base)
        env = _clib.exec_env(self.socket, env) if clib else env | {"RNIC_SOCKET": self.socket}
        bindir = os.path.dirname(sys.executable)
        if bindir not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
        return env

    def run(self, *cmd, **kw) -> subprocess.CompletedProcess:
        """Run cmd inside this host (RNIC_SOCKET set); subprocess.run's keywords."""
        kw["env"] = self.env(kw.get("env"))
        return subprocess.run(self.argv(*cmd), **kw)

    def popen(self, *cmd, **kw) -> subprocess.Popen:
        kw["env"] = self.env(kw.get("env"))
        return subprocess.Popen(self.argv(*cmd), **kw)

    def exec(self, *cmd, **kw) -> subprocess.CompletedProcess:
        """Run an unmodified RDMA program inside this host on its rnicd (`rnic exec`)."""
        kw["env"] = self.env(kw.get("env"), clib=True)
        return subprocess.run(self.argv(*cmd), **kw)

    def exec_popen(self, *cmd, **kw) -> subprocess.Popen:
        kw["env"] = self.env(kw.get("env"), clib=True)
        return subprocess.Popen(self.argv(*cmd), **kw)

    def context(self):
        from rnic.device import Context
        return Context(socket=self.socket)


def _fault_specs(n: int, fault, delay) -> list[str | None]:
    """--fault SPEC (all hosts) / hK=SPEC (one host), --delay MS / hK=MS -> per host spec
    text, checked by rnicd's own parser. Later items override earlier ones key by key."""
    from rnicd.core.fault import FaultSpec
    per: list[list[str]] = [[] for _ in range(n)]

    def targets(item: str) -> tuple[list[int], str]:
        head, sep, rest = item.partition("=")
        if sep and head[:1] == "h" and head[1:].isdigit():
            k = int(head[1:])
            if not 1 <= k <= n:
                raise LabError(f"{item!r}: there is no host {head} (h1..h{n})")
            return [k - 1], rest
        return list(range(n)), item

    for item in ([fault] if isinstance(fault, str) else list(fault or ())):
        idx, spec = targets(item)
        for i in idx:
            per[i].append(spec)
    for item in ([delay] if isinstance(delay, (str, int, float)) else list(delay or ())):
        idx, ms = targets(str(item))
        try:
            if float(ms) < 0:
                raise ValueError
        except ValueError:
            raise LabError(f"bad delay {item!r}: milliseconds, or hK=MS") from None
        for i in idx:
            per[i].append(f"delay=1,delay_ms={float(ms)}")
    out = []
    for specs in per:
        text = ",".join(s for s in specs if s)
        try:
            FaultSpec.parse(text)
        except ValueError as exc:
            raise LabError(f"bad fault spec {text!r}: {exc}") from None
        out.append(text or None)
    return out


def _addresses(subnet: str, n: int) -> tuple[list[str], int]:
    try:
        nw = ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise LabError(f"bad subnet {subnet!r}: {exc}") from None
    if nw.version != 4:
        raise LabError(f"subnet {subnet}: rnicd binds IPv4 addresses")
    if n > nw.num_addresses - 2:
        raise LabError(f"subnet {subnet} has room for {max(nw.num_addresses - 2, 0)} hosts, "
                       f"not {n}")
    return [str(nw.network_address + i) for i in range(1, n + 1)], nw.prefixlen


def clear(name: str, root: str | None = None, procs=()) -> dict:
    """Remove everything of lab `name`, whatever state it is in: its daemons (found by their
    command line), namespaces (found by the lab's tag) and run directory."""
    d, t = lab_dir(name, root), lab_tag(name)
    pids = daemons.find(d)
    daemons.stop(pids, procs)
    gone = net.remove(t) if net.namespaces(t) else []
    shutil.rmtree(d, ignore_errors=True)
    if (root is None or root == run_root()) and not os.environ.get("RNIC_LAB_DIR"):
        try:
            os.rmdir(run_root())       # the default run root too, when no other lab is left
        except OSError:
            pass
    return {"daemons": pids, "namespaces": gone}


class Lab:
    """N hosts h1..hN with an rnicd each. Lab(n, ...).up() builds it (or `with Lab(n) as lab`),
    .down() removes every trace; Lab.attach(name) uses a lab another process made."""

    def __init__(self, n: int = 2, name: str = "lab", *, subnet: str | None = None,
                 mtu: int | None = None, fault=None, delay=None, rate: str | None = None,
                 loopback: bool = False, root: str | None = None,
                 log_level: str | None = "info", timeout: float | None = None):
        self.name, self.n, self.loopback = check_name(name), int(n), loopback
        if not 1 <= self.n <= 1000:
            raise LabError(f"a lab has 1..1000 hosts, not {n}")
        if mtu is not None and not 576 <= int(mtu) <= 9000:
            raise LabError(f"MTU {mtu} out of range (576..9000)")
        self.root, self.mtu, self.rate = root or run_root(), mtu, rate
        self.rate_bits = net.parse_rate(rate) if rate else None
        if self.rate_bits and loopback:
            raise LabError("--rate needs namespace mode (a tbf on each host's veth)")
        self.faults = _fault_specs(self.n, fault, delay)
        self.subnet, self.log_level = subnet, log_level
        self.timeout = timeout if timeout is not None else 30 + 0.5 * self.n
        self.run_dir, self.tag = lab_dir(name, self.root), lab_tag(name)
        self.hosts: list[Host] = []
        self.state: dict | None = None

    # ---- making and removing --------------------------------------------------------------
    def up(self) -> "Lab":
        if not self.loopback and (why := net.missing()):
            raise LabError(why)
        t0 = time.monotonic()
        cleared = clear(self.name, self.root)            # leftovers of a crash or killed up
        if cleared["daemons"] or cleared["namespaces"]:
            print(f"rnic lab: cleared leftovers of lab {self.name!r}: "
                  f"{len(cleared['daemons'])} daemons, {len(cleared['namespaces'])} namespaces",
                  file=sys.stderr)
        subnet = self.subnet or (self._free_loopback_subnet() if self.loopback
                                 else NETNS_SUBNET)
        ips, plen = _addresses(subnet, self.n)
        if self.loopback and not all(ip.startswith("127.") for ip in ips):
            raise LabError(f"--loopback needs a subnet in 127.0.0.0/8, not {subnet}")
        os.makedirs(self.run_dir, mode=0o755)
        recs = [{"name": f"h{k}", "ip": ip, "socket": os.path.join(self.run_dir, f"h{k}.sock"),
                 "log": os.path.join(self.run_dir, f"h{k}.log"),
                 "pidfile": os.path.join(self.run_dir, f"h{k}.pid"),
                 "netns": None if self.loopback else net.ns_name(self.tag, f"h{k}"),
                 "fault": self.faults[k - 1], "pid": None}
                for k, ip in enumerate(ips, start=1)]
        self.state = {"name": self.name, "tag": self.tag, "run_dir": self.run_dir,
                      "mode": "loopback" if self.loopback else "netns", "subnet": subnet,
                      "mtu": self.mtu, "rate": self.rate, "state": "building",
                      "switch": None if self.loopback else net.ns_name(self.tag, "sw"),
                      "python": sys.executable, "hosts": recs}
        procs = []
        try:
            save_state(self.state)
            if not self.loopback:
                net.build(self.tag, [(r["name"], r["ip"], plen) for r in recs], self.mtu,
                          self.rate_bits)
            t_net = time.monotonic()
            for r in recs:
                procs.append(daemons.start(r, self.log_level))
            save_state(self.state)
            daemons.wait_ready(recs, self.timeout)
        except BaseException:
            clear(self.name, self.root, procs)
            self.hosts = []
            raise
        self.state |= {"state": "up", "up_s": round(time.monotonic() - t0, 3),
                       "network_s": round(t_net - t0, 3)}
        save_state(self.state)
        self.hosts = [Host(r, p) for r, p in zip(recs, procs, strict=True)]
        return self

    def down(self) -> dict:
        procs = [h.proc for h in self.hosts if h.proc is not None]
        self.hosts = []
        return clear(self.name, self.root, procs)

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc):
        self.down()

    @classmethod
    def attach(cls, name: str = "lab", root: str | None = None) -> "Lab":
        """The lab `name` that is up (made by any process)."""
        state = load_state(name, root)
        if state is None:
            have = list_labs(root)
            raise LabError(f"no lab {name!r} in {root or run_root()} (labs: "
                           f"{', '.join(have) or 'none'}; rnic lab up N --name {name})")
        lab = cls.__new__(cls)
        lab.name, lab.root, lab.state = name, root or run_root(), state
        lab.run_dir, lab.tag, lab.loopback = state["run_dir"], state["tag"], \
            state["mode"] == "loopback"
        lab.n, lab.mtu, lab.rate = len(state["hosts"]), state.get("mtu"), state.get("rate")
        lab.hosts = [Host(r) for r in state["hosts"]]
        return lab

    def _free_loopback_subnet(self) -> str:
        used = {(load_state(n, self.root) or {}).get("subnet") for n in list_labs(self.root)}
        for k in range(1, 255):
            if LOOPBACK_SUBNET.format(k) not in used:
                return LOOPBACK_SUBNET.format(k)
        raise LabError("every 127.77.K.0/24 is taken by a lab; give --subnet")

    # ---- using -----------------------------------------------------------------------------
    def host(self, which) -> Host:
        """hosts by name ('h2'), number (2, counting from 1) or Host."""
        if isinstance(which, Host):
            return which
        key = f"h{which}" if isinstance(which, int) or str(which).isdigit() else str(which)
        for h in self.hosts:
            if h.name == key:
                return h
        raise LabError(f"lab {self.name!r} has no host {which!r} (h1..h{len(self.hosts)})")

    def status(self) -> dict:
        """Per host: address, pid, alive, serving, CPU/RSS, object counts and counters."""
        hosts = []
        for h in self.hosts:
            pid = h.pid if h.pid and daemons.alive(h.pid) else (daemons.find_one(h.socket))
            row = {"name": h.name, "ip": h.ip, "netns": h.netns, "socket": h.socket,
                   "pid": pid, "alive": daemons.alive(pid), "fault": h.fault,
                   "serving": False, **daemons.proc_stats(pid)}
            if row["alive"] and daemons.serves(h.socket):
                try:
                    with h.context() as ctx:
                        row |= {"serving": True, "objects": ctx.get_objects(),
                                "counters": ctx.get_counters()}
                except Exception as exc:            # a daemon that stopped answering
                    row["error"] = str(exc)
            hosts.append(row)
        st = self.state or {}
        return {"name": self.name, "mode": st.get("mode"), "subnet": st.get("subnet"),
                "run_dir": self.run_dir, "switch": st.get("switch"), "state": st.get("state"),
                "mtu": st.get("mtu"), "rate": st.get("rate"), "hosts": hosts}

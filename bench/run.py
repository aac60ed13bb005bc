#!/usr/bin/env python3
"""rnicd benchmark matrix, with the peer baselines (../shared/bench/peers.py) in the same run.

Starts two daemons on loopback (127.0.77.1, 127.0.77.2), drives `rnic perf ... --local --json`
over a matrix (bw, lat, qps, rate), measures daemon RSS with 1/64/1024 QPs on a third daemon
(mem), runs the peers (peers), takes medians over --runs, computes the target ratios and writes
<out>/<YYYY-MM-DD>.json, then calls bench/plot.py (README.md only with --update-readme). See
bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.environ.get("RNIC_PEERS", os.path.join(ROOT, "..", "shared", "bench", "peers.py"))
GROUPS = ("peers", "bw", "lat", "rate", "qps", "loss", "failover", "mem", "perftest", "lab")
LOSS = "drop=0.01,seed=1"   # the loss case: this fault on both daemons, 64 KiB WRITE bw
BW_TESTS = ("write_bw", "read_bw", "send_bw")
LAT_TESTS = ("write_lat", "read_lat", "send_lat", "atomic_lat")
SIZES, QUICK_SIZES = [64 << i for i in range(15)], [64, 4096, 65536, 1 << 20]   # 64 B..1 MiB
QPS, QUICK_QPS = [1, 2, 4, 8, 16, 32, 64], [1, 8, 64]
RATE = [("write_bw", 1), ("write_bw", 32), ("send_bw", 32)]                     # 64 B, post list
MEM_QPS = [1, 64, 1024]
# name, label, rnicd case key, rnicd metric, scale to the peer's unit, peer case, op, target
TARGETS = [
    ("write_bw_64k", "64 KiB RDMA WRITE bw (MB/s)", "write_bw s=65536 q=1 l=1", "bw_avg_MBps", 1,
     "ucx_put_bw_64k", ">=", 1.0),
    ("send_bw_64k", "64 KiB SEND bw (MB/s)", "send_bw s=65536 q=1 l=1", "bw_avg_MBps", 1,
     "ucx_tag_bw_64k", ">=", 0.8),
    ("write_rate_64_l32", "64 B WRITE msg rate, post list 32 (msg/s)", "write_bw s=64 q=1 l=32",
     "msg_rate_Mpps", 1e6, "ucx_tag_rate_64", ">=", 1.0),
    ("send_lat_64", "64 B SEND latency, one-way (us)", "send_lat s=64 q=1 l=1", "t_typical_us", 1,
     "ucx_tag_lat_64", "<=", 3.0),
    ("write_lat_64", "64 B RDMA WRITE latency, one-way (us)", "write_lat s=64 q=1 l=1",
     "t_typical_us", 1, "ucx_put_lat_64", "<=", 2.0),
    # unmodified perftest through `rnic exec` (the C libraries), issue 12's targets
    ("perftest_send_lat_64", "perftest ib_send_lat 64 B, one-way (us)",
     "perftest_ib_send_lat s=64 q=1 l=1", "t_typical_us", 1, "ucx_tag_lat_64", "<=", 3.0),
    ("perftest_write_bw_64k", "perftest ib_write_bw 64 KiB (MB/s)",
     "perftest_ib_write_bw s=65536 q=1 l=1", "bw_avg_MBps", 1, "ucx_put_bw_64k", ">=", 1.0),
    # against rnicd's own fault-free case of the same run (issue 22)
    ("write_bw_64k_loss", f"64 KiB RDMA WRITE bw under {LOSS} (MB/s)",
     "write_bw_loss s=65536 q=1 l=1", "bw_avg_MBps", 1, "rnicd:write_bw s=65536 q=1 l=1", ">=",
     0.5),
]
PERFTEST = [("ib_write_bw", 65536), ("ib_send_bw", 65536), ("ib_read_bw", 65536),
            ("ib_send_lat", 64), ("ib_write_lat", 64), ("ib_read_lat", 64)]
MIB = 1.048576      # perftest's MB is 2^20 bytes; the peers' and rnic perf's are 10^6
CDF_P = [i / 200 for i in range(199)] + [0.995 + i / 1000 for i in range(5)] + [1.0]
BW_KEYS = ("bw_peak_MBps", "bw_avg_MBps", "msg_rate_Mpps")
LAT_KEYS = ("t_min_us", "t_max_us", "t_typical_us", "t_avg_us", "t_stdev_us", "p99_us", "p999_us")


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def key(test, size, qps=1, post_list=1):
    return f"{test} s={size} q={qps} l={post_list}"


class Daemon:
    """One rnicd process ("host"): started, checked, measured through /proc, stopped by PID."""

    def __init__(self, ip, tmp, env, extra=()):
        self.ip, self.sock, self.env = ip, os.path.join(tmp, f"{ip}.sock"), env
        self.extra = list(extra)
        self.log_path = os.path.join(tmp, f"{ip}.log")
        self.proc = None
        self.restarts = -1

    def start(self, timeout=20.0):
        with open(self.log_path, "a") as logf:
            # A session of its own, as under systemd: with the kernel's autogroups the
            # scheduler then weighs the daemon and its engines as one group beside each
            # program's (docs/engines.md, "Why groups matter").
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rnicd.cli", "--bind", self.ip, "--ctl-socket", self.sock,
                 "--log-level", "warning", *self.extra], stdout=logf, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True)
        self.restarts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rnicd {self.ip} exited {self.proc.returncode}: {self.tail()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rnicd {self.ip} not ready in {timeout}s: {self.tail()}")

    def ensure(self):
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                log(f"rnicd {self.ip} died (rc {self.proc.returncode}); restarting")
            self.start()

    def tail(self, n=600):
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def cpu_s(self):
        """CPU seconds of the daemon and of its engines (its child processes)."""
        from rnic.lab.daemons import children
        total = 0.0
        for pid in [self.proc.pid] + children(self.proc.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def json_lines(text):
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return [r for r in rows if isinstance(r, dict)]


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_perf(a, pair, test, size, run, qps=1, post_list=1, samples=None):
    """One `rnic perf` invocation; returns the raw record (results = its JSON lines)."""
    cli, srv = pair
    for d in pair:
        d.ensure()
    prefix = ([sys.executable, os.path.abspath(__file__), "_fake-perf"] if a.fake_perf
              else [sys.executable, "-m", "rnic.tool"])
    cmd = prefix + ["--socket", cli.sock, "perf", test, "--local", "--server-socket", srv.sock,
                    "--json", "-s", str(size)]
    if test.endswith("_lat"):
        cmd += ["-n", str(a.lat_iters)] + (["--samples", samples] if samples else [])
    else:
        cmd += ["-D", str(a.duration)]
    cmd += ["-q", str(qps)] * (qps != 1) + ["-l", str(post_list)] * (post_list != 1)
    rec = {"key": key(test, size, qps, post_list), "test": test, "size": size, "qps": qps,
           "post_list": post_list, "run": run, "cmd": cmd[len(prefix):], "results": []}
    d0, c0, t0 = sum(d.cpu_s() for d in pair), children_cpu_s(), time.monotonic()
    # Own process group: on a timeout the tool's --local server child is killed with it.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=a.env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rec["error"] = f"timeout after {a.timeout}s"
    rec["rc"], rec["results"] = p.returncode, json_lines(out)
    if not rec.get("error") and (p.returncode or not rec["results"]):
        rec["error"] = (err.strip() or out.strip())[-800:] or "no JSON output"
    rec["wall_s"] = round(time.monotonic() - t0, 3)
    try:
        rec["cpu_s"] = {"daemons": round(sum(d.cpu_s() for d in pair) - d0, 3),
                        "app": round(children_cpu_s() - c0, 3)}
    except (OSError, AttributeError):     # a daemon died during the test
        rec["error"] = rec.get("error") or "daemon died during the test"
    if samples and os.path.exists(samples) and not rec.get("error"):
        with open(samples) as f:
            rec["_samples"] = [float(x) for x in f.read().split()]
        os.unlink(samples)
    msg = rec.get("error", "").splitlines()[-1:] or [summary_line(rec["results"])]
    log(f"{rec['key']} run {run}: {msg[0][:160]}")
    return rec


def tcp_listening(port):
    """Is a TCP socket listening on port (perftest's out-of-band exchange)?"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = [ln.split() for ln in open(table).read().splitlines()[1:]]
        except OSError:
            continue
        if any(r[3] == "0A" and int(r[1].rsplit(":", 1)[1], 16) == port for r in rows):
            return True
    return False


def parse_perftest(prog, size, out):
    """perftest's result row as rnic perf's JSON keys (MB/s in 10^6 bytes)."""
    row = next((ln.split() for ln in out.splitlines() if ln.split()[:1] == [str(size)]), None)
    if row is None:
        return []
    v = [float(x) for x in row[2:]]
    if prog.endswith("_bw"):     # #bytes #iterations peak avg rate
        return [{"bw_peak_MBps": v[0] * MIB, "bw_avg_MBps": v[1] * MIB, "msg_rate_Mpps": v[2],
                 "iterations": int(row[1]), "bytes": size}]
    keys = ("t_min_us", "t_max_us", "t_typical_us", "t_avg_us", "t_stdev_us", "p99_us",
            "p999_us")
    if len(v) != len(keys):
        return []
    return [dict(zip(keys, v, strict=True), iterations=int(row[1]))]


def run_perftest(a, pair, prog, size, run):
    """Debian's perftest, unmodified, through `rnic exec`: the server on one daemon, the client
    on the other, over verbs with GID index 0; the record has run_perf's shape."""
    cli, srv = pair
    for d in pair:
        d.ensure()
    port = 20000 + random.randrange(20000)
    args = [prog, "-d", "rnic0", "-x", "0", "-p", str(port), "-s", str(size)]
    args += ["-n", str(a.lat_iters)] if prog.endswith("_lat") else ["-D", str(a.duration)]
    exe = [sys.executable, "-m", "rnic.tool", "exec", "--socket"]
    rec = {"key": key(f"perftest_{prog}", size), "test": f"perftest_{prog}", "size": size,
           "qps": 1, "post_list": 1, "run": run, "cmd": args, "results": []}
    t0 = time.monotonic()
    server = subprocess.Popen(exe + [srv.sock, "--", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=a.env,
                              start_new_session=True)
    try:
        while not tcp_listening(port) and server.poll() is None and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        p = subprocess.run(exe + [cli.sock, "--", *args, srv.ip], capture_output=True,
                           text=True, env=a.env, timeout=a.timeout, start_new_session=True)
        server.communicate(timeout=a.timeout)
        rec["rc"], rec["results"] = p.returncode, parse_perftest(prog, size, p.stdout)
        if p.returncode or not rec["results"]:
            rec["error"] = (p.stderr.strip() or p.stdout.strip())[-800:] or "no result row"
    except subprocess.TimeoutExpired:
        rec["error"] = f"timeout after {a.timeout}s"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    rec["wall_s"] = round(time.monotonic() - t0, 3)
    msg = rec.get("error", "").splitlines()[-1:] or [summary_line(rec["results"])]
    log(f"{rec['key']} run {run}: {msg[0][:160]}")
    return rec


def summary_line(results):
    r = results[-1] if results else {}
    if "bw_avg_MBps" in r:
        return f"{r['bw_avg_MBps']:.1f} MB/s, {r.get('msg_rate_Mpps', 0):.3f} Mpps"
    return f"typical {r.get('t_typical_us', 0):.2f} us, p99 {r.get('p99_us', 0):.2f} us"


MEM_CLIENT = r"""
import sys
import rnic.enums as e
from rnic.cq import CQ
from rnic.device import Context
from rnic.pd import PD
from rnic.qp import QP, QPCap, QPInitAttr
with Context(socket=sys.argv[1]) as ctx:
    pd = PD(ctx)
    cq = CQ(ctx, 4096, None, None, 0)
    qps = [QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                             cap=QPCap(max_send_wr=64, max_recv_wr=64)))
           for _ in range(int(sys.argv[2]))]
    print("ready", len(qps), flush=True)
    sys.stdin.read()
"""


def measure_rss(a, d, n):
    """Daemon VmRSS while one client holds n RC QPs (64/64 WRs, one shared CQ)."""
    rec = {"qps": n, "idle_rss_kib": d.rss_kib()}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", MEM_CLIENT, d.sock, str(n)], env=a.env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = select.select([p.stdout], [], [], a.timeout)[0]
        line = p.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            p.kill()
            rec["error"] = (line + p.stderr.read())[-800:] or f"timeout after {a.timeout}s"
        else:
            rec["setup_s"] = round(time.monotonic() - t0, 3)
            time.sleep(0.3)
            rec["rss_kib"] = d.rss_kib()
            rec["delta_kib"] = rec["rss_kib"] - rec["idle_rss_kib"]
        p.stdin.close()
        p.wait(30)
    except subprocess.TimeoutExpired:
        rec["error"] = rec.get("error") or "client did not exit"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    time.sleep(0.5)
    rec["after_close_rss_kib"] = d.rss_kib()
    log(f"mem {n} QPs: {rec.get('rss_kib', rec.get('error'))} KiB")
    return rec


def run_peers(a, run):
    rec = {"run": run, "rows": []}
    if not os.path.exists(PEERS):
        rec["error"] = f"{PEERS} not found (set RNIC_PEERS)"
        return rec
    cmd = [sys.executable, PEERS] + (["--quick"] if a.quick else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.peers_timeout)
        out, rec["rc"] = p.stdout, p.returncode
        if p.returncode:
            rec["error"] = p.stderr[-800:]
    except subprocess.TimeoutExpired as exc:  # keep the cases that finished
        out, rec["error"] = exc.stdout or "", f"timeout after {a.peers_timeout}s"
    out = out.decode() if isinstance(out, bytes) else out
    rec["rows"] = [r for r in json_lines(out) if "case" in r]
    for r in rec["rows"]:
        log(f"peer {r['case']} run {run}: {r['value']} {r['unit']} {r.get('error', '')[:120]}")
    return rec


def median(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return round(statistics.median(xs), 4) if xs else None


def quantiles(xs, ps=CDF_P):
    xs = sorted(xs)
    return [round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) for p in ps]


def summarize(perf_runs, peer_runs):
    by_key, cpu, samples = {}, {}, {}
    for rec in perf_runs:
        if "_samples" in rec:
            samples.setdefault(rec["key"], []).extend(rec.pop("_samples"))
        if rec.get("error") or not rec["results"]:
            continue
        r = rec["results"][-1]
        by_key.setdefault(rec["key"], []).append(r)
        if rec["test"] in BW_TESTS and rec["qps"] == 1 and rec.get("cpu_s"):
            moved = r.get("bytes", rec["size"]) * (r.get("iterations") or 0)
            if moved:
                cpu.setdefault(rec["key"], []).append(sum(rec["cpu_s"].values()) / (moved / 1e9))
    medians = {k: {m: median([r.get(m) for r in rs]) for m in BW_KEYS + LAT_KEYS
                   if any(m in r for r in rs)} | {"runs": len(rs)} for k, rs in by_key.items()}
    peers = {}
    for row in (row for pr in peer_runs for row in pr["rows"]):
        p = peers.setdefault(row.get("case"), {k: row.get(k) for k in ("peer", "metric", "unit")}
                             | {"values": [], "errors": []})
        p["values"] += [row["value"]] if row.get("value") is not None else []
        p["errors"] += [row["error"]] if row.get("error") else []
    for p in peers.values():
        p["median"] = median(p["values"])
    ratios = []
    for name, label, k, metric, scale, case, op, target in TARGETS:
        mine = medians.get(k, {}).get(metric)
        mine = round(mine * scale, 3) if mine is not None else None
        peer = (medians.get(case[6:], {}).get(metric) if case.startswith("rnicd:")
                else peers.get(case, {}).get("median"))
        ratio = round(mine / peer, 3) if mine is not None and peer else None
        met = None if ratio is None else (ratio >= target if op == ">=" else ratio <= target)
        ratios.append({"name": name, "label": label, "rnicd_case": k, "rnicd_metric": metric,
                       "rnicd": mine, "peer_case": case, "peer": peer, "ratio": ratio, "op": op,
                       "target": target, "met": met})
    return {"medians": medians, "peers": peers, "ratios": ratios,
            "cpu_s_per_GB": {k: median(v) for k, v in cpu.items()},
            "latency_cdf": {k: {"n": len(v), "p": CDF_P, "us": quantiles(v)}
                            for k, v in samples.items() if v}}


def machine_info():
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "hostname": platform.node(), "rnicd_git": git}


def fake_perf(argv):
    """Stand-in for `python -m rnic.tool perf` (development only: --fake-perf)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("test")
    ap.add_argument("--samples")
    for f in ("-s", "-n", "-q", "-l", "-D"):
        ap.add_argument(f, type=float, default=None if f in ("-s", "-n", "-D") else 1)
    o = ap.parse_known_args(argv[argv.index("perf") + 1:])[0]
    size, rnd = int(o.s or 65536), random.Random()
    out = {"test": o.test, "bytes": size}
    if o.test.endswith("_bw"):
        time.sleep(min(o.D or 1, 0.2))
        bw = 2500 * size / (size + 6000) * min(o.q, 4) ** 0.3 * min(o.l, 32) ** 0.2
        bw *= rnd.uniform(0.9, 1.1)
        out |= {"iterations": int(bw * 1e6 * (o.D or 1) / size), "bw_avg_MBps": round(bw, 2),
                "bw_peak_MBps": round(bw * 1.1, 2), "msg_rate_Mpps": round(bw / size, 4)}
    else:
        base = {"write_lat": 9, "send_lat": 11, "read_lat": 15, "atomic_lat": 16}[o.test]
        xs = sorted(base * rnd.lognormvariate(0, 0.15) for _ in range(int(o.n or 1000)))
        if o.samples:
            with open(o.samples, "w") as f:
                f.writelines(f"{x:.3f}\n" for x in xs)
        q = dict(zip(("t_min_us", "t_typical_us", "p99_us", "p999_us", "t_max_us"),
                     quantiles(xs, (0, .5, .99, .999, 1)), strict=True))
        out |= q | {"iterations": len(xs), "t_avg_us": round(statistics.fmean(xs), 3),
                    "t_stdev_us": round(statistics.stdev(xs), 3)}
    print(json.dumps(out))
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes, iterations, runs")
    ap.add_argument("--runs", type=int, help="runs per case, medians taken (default 3; --quick 1)")
    ap.add_argument("--out", help="results directory (default bench/results)")
    ap.add_argument("--only", default=",".join(GROUPS), help="groups: " + ",".join(GROUPS))
    ap.add_argument("--fake-perf", action="store_true",
                    help="development only: made-up perf numbers instead of `rnic perf`")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per perf invocation")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--update-readme", action="store_true",
                    help="also rewrite README.md's Performance section from these results")
    a = ap.parse_args(argv)
    a.only = [g for g in a.only.split(",") if g]
    if bad := set(a.only) - set(GROUPS):
        ap.error(f"unknown group(s) {sorted(bad)}; choose from {','.join(GROUPS)}")
    a.runs = a.runs or (1 if a.quick else 3)
    a.out = a.out or os.path.join(HERE, "results", "fake" if a.fake_perf else "")
    a.duration, a.lat_iters = (1, 2000) if a.quick else (2, 10000)
    a.peers_timeout = 300 if a.quick else 1200
    a.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.path.join(ROOT, "clients", "python")]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return a


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    started = datetime.datetime.now()
    doc = {"schema": 1, "date": started.strftime("%Y-%m-%d"), "started": started.isoformat(
        timespec="seconds"), "quick": a.quick, "runs": a.runs, "fake_perf": a.fake_perf,
        "groups": a.only, "machine": machine_info(), "perf_runs": [], "peer_runs": [], "mem": []}
    # The peers first, while no daemon runs (so nothing of ours competes for the 2 cores).
    if "peers" in a.only:
        doc["peer_runs"] = [run_peers(a, i) for i in range(a.runs)]
    sizes, qps = (QUICK_SIZES, QUICK_QPS) if a.quick else (SIZES, QPS)
    matrix = ([(t, s, 1, 1) for t in BW_TESTS for s in sizes] * ("bw" in a.only)
              + [(t, 8 if t == "atomic_lat" else 64, 1, 1) for t in LAT_TESTS] * ("lat" in a.only)
              + [(t, 64, 1, pl) for t, pl in RATE] * ("rate" in a.only)
              + [("write_bw", 65536, q, 1) for q in qps] * ("qps" in a.only))
    matrix = list(dict.fromkeys(matrix))       # a case in two groups runs once per run
    tmp = tempfile.mkdtemp(prefix="rnic-bench-")
    daemons = [Daemon(ip, tmp, a.env) for ip in ("127.0.77.1", "127.0.77.2", "127.0.77.3")]
    lossy = [Daemon(ip, tmp, a.env, ("--fault", LOSS)) for ip in ("127.0.77.4", "127.0.77.5")]
    failing = [Daemon(ip, tmp, a.env, ("--engines", "2")) for ip in ("127.0.77.6", "127.0.77.7")]
    try:
        if matrix or "perftest" in a.only:
            pair = (daemons[0].start(), daemons[1].start())
            doc["warmup"] = run_perf(a, pair, "write_bw", 65536, "warm-up")  # not in medians
            for run in range(a.runs):          # runs outermost: a slow drift hits every case
                for test, size, q, pl in matrix:
                    samples = os.path.join(tmp, "samples.txt") if test.endswith("_lat") else None
                    doc["perf_runs"].append(run_perf(a, pair, test, size, run, q, pl, samples))
                if "perftest" in a.only:
                    doc["perf_runs"] += [run_perftest(a, pair, prog, size, run)
                                         for prog, size in PERFTEST]
        if "loss" in a.only:                    # its own pair: faults on both daemons
            for d in daemons[:2]:
                d.stop()
            pair = (lossy[0].start(), lossy[1].start())
            for run in range(a.runs):
                rec = run_perf(a, pair, "write_bw", 65536, run)
                rec["key"] = key("write_bw_loss", 65536)
                doc["perf_runs"].append(rec)
            for d in lossy:
                d.stop()
        if "failover" in a.only:                # engines killed under a WRITE stream
            pair = (failing[0].start(), failing[1].start())
            p = subprocess.run([sys.executable, os.path.join(HERE, "failover.py"),
                                pair[0].sock, pair[1].sock, "--kills", "5" if a.quick else "20"],
                               capture_output=True, text=True, env=a.env, timeout=600)
            doc["failover"] = (json_lines(p.stdout) or [{"error": p.stderr[-800:]}])[0]
            log(f"failover: {doc['failover']}")
            for d in failing:
                d.stop()
        if "mem" in a.only:
            d = daemons[2].start()
            doc["mem"] = [measure_rss(a, d, n) for n in MEM_QPS]
        if "lab" in a.only:                    # rnic lab at scale (bench/lab_scale.py)
            for d in daemons:
                d.stop()
            p = subprocess.run([sys.executable, os.path.join(HERE, "lab_scale.py"), "--json",
                                "--hosts", "8" if a.quick else "64"], capture_output=True,
                               text=True, env=a.env, timeout=1800)
            sys.stderr.write(p.stderr)
            doc["lab"] = (json_lines(p.stdout) or [{"error": p.stderr[-800:]}])[0]
    except Exception as exc:                   # keep what was measured; say why it stopped
        log(f"aborted: {exc!r}")
        doc["aborted"] = repr(exc)[-2000:]
    finally:
        for d in daemons + lossy + failing:
            d.stop()
        doc["daemon_restarts"] = {d.ip: max(d.restarts, 0) for d in daemons + lossy + failing}
        doc["daemon_log_tails"] = {d.ip: t for d in daemons + lossy if (t := d.tail())}
        shutil.rmtree(tmp, ignore_errors=True)
    doc |= summarize(doc["perf_runs"], doc["peer_runs"])
    doc["qp_scaling"] = [{"qps": q, "bw_avg_MBps": doc["medians"].get(key("write_bw", 65536, q),
                                                                      {}).get("bw_avg_MBps")}
                         for q in qps] if "qps" in a.only else []
    doc["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    path = os.path.join(a.out, f"{doc['date']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)
    log(f"wrote {path}")
    for r in doc["ratios"]:
        met = {True: "met", False: "NOT met", None: "n/a"}[r["met"]]
        log(f"{r['name']}: rnicd {r['rnicd']} peer {r['peer']} ratio {r['ratio']} "
            f"(target {r['op']} {r['target']}: {met})")
    if not a.no_plot:
        cmd = [sys.executable, os.path.join(HERE, "plot.py"), path]
        if a.update_readme and not a.fake_perf:
            cmd += ["--readme", os.path.join(ROOT, "README.md")]
        p = subprocess.run(cmd, timeout=300)
        if p.returncode:
            log(f"plot.py failed (rc {p.returncode}); the JSON is complete")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_fake-perf"]:
        sys.exit(fake_perf(sys.argv[2:]))
    sys.exit(main())

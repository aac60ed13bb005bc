"""rnicd's libibverbs.so.1 (clients/c) under unmodified Debian programs, through `rnic exec`,
between two daemons on loopback: ibv_devices, ibv_devinfo -v, the rc/uc/ud/srq pingpongs
(rdma-core's examples: each side checks the exchange), and bad use answered with
libibverbs' documented errors (tests/integration/c/bad_use.c)."""
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from clibs import ROOT, need_clib, server_then_client, tcp_listening
from clibs import rnic_exec as _exec
from kills import engines

TIMEOUT = 60


@pytest.fixture(scope="module")
def libibverbs():
    return need_clib("ibv_rc_pingpong")


def rnic_exec(daemon, *cmd):
    return _exec(daemon.socket, *cmd)


def run(daemon, *cmd, **kw):
    r = subprocess.run(rnic_exec(daemon, *cmd), capture_output=True, text=True,
                       timeout=TIMEOUT, **kw)
    return r


def test_ibv_devices(libibverbs, rnicd):
    d = rnicd("a")
    r = run(d, "ibv_devices")
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if "rnic0" in ln]
    assert len(line) == 1 and len(line[0].split()[1]) == 16, r.stdout   # name and GUID


def test_ibv_devinfo_v(libibverbs, rnicd):
    d = rnicd("a")
    r = run(d, "ibv_devinfo", "-v")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for want in ("hca_id:\trnic0", "PORT_ACTIVE (4)", "link_layer:\t\tEthernet",
                 f"GID[  0]:\t\t::ffff:{d.ip}, RoCE v2", "max_qp_wr:",
                 "atomic_cap:\t\t\tATOMIC_HCA"):
        assert want in out, (want, out)


def test_rnic_exec_without_daemon_lists_no_device(libibverbs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "rnic.tool", "exec", "--socket",
                        str(tmp_path / "none.sock"), "--", "ibv_devinfo"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "No IB devices found" in r.stdout + r.stderr, r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def client_server(a, b, prog, args):
    """prog ARGS as a server on daemon a, then (once its TCP port listens) as the client on
    daemon b naming a's address (the programs exchange QP numbers and GIDs over TCP):
    (client result, server exit code, server output)."""
    port = int(args[args.index("-p") + 1])
    return server_then_client(rnic_exec(a, prog, *args), rnic_exec(b, prog, *args, a.ip),
                              lambda srv: tcp_listening(srv.pid, port), timeout=TIMEOUT)


@pytest.mark.parametrize("events", [False, True], ids=["poll", "events"])
@pytest.mark.parametrize("kind", ["rc", "uc", "ud", "srq"])
def test_pingpong(libibverbs, rnicd, kind, events):
    """ibv_<kind>_pingpong -g 0: server on daemon a, client on daemon b; both sides must
    finish their iterations (each checks what it receives)."""
    a, b = rnicd("a"), rnicd("b")
    port = _free_port()
    args = ["-d", "rnic0", "-g", "0", "-p", str(port), "-n", "200"]
    args += ["-e"] if events else []   # -e: sleep in ibv_get_cq_event (a completion channel)
    client, server_rc, sout = client_server(a, b, f"ibv_{kind}_pingpong", args)
    assert client.returncode == 0, client.stdout + client.stderr
    assert server_rc == 0, sout
    for out in (client.stdout, sout):
        assert "200 iters in" in out, out
    assert f"GID ::ffff:{b.ip}" in sout and f"GID ::ffff:{a.ip}" in client.stdout


PERFTEST = ["ib_write_bw", "ib_read_bw", "ib_send_bw", "ib_atomic_bw", "ib_write_lat",
            "ib_send_lat", "ib_read_lat"]


@pytest.mark.parametrize("prog", PERFTEST)
def test_perftest(libibverbs, rnicd, prog):
    """perftest (it links libmlx5 and libefa, which must load against ours) over verbs, GID
    index 0: both sides finish and report a result row."""
    if shutil.which(prog) is None:
        pytest.skip("perftest not installed (make sysdeps)")
    a, b = rnicd("a"), rnicd("b")
    args = ["-d", "rnic0", "-x", "0", "-p", str(_free_port()), "-n", "100"]
    client, server_rc, sout = client_server(a, b, prog, args)
    assert client.returncode == 0 and server_rc == 0, client.stdout + client.stderr + sout
    size = "8" if "atomic" in prog else "2" if prog.endswith("lat") else "65536"
    rows = [ln.split() for ln in client.stdout.splitlines() if ln.split()[:1] == [size]]
    assert len(rows) == 1 and len(rows[0]) >= 4 and float(rows[0][-1]) > 0, client.stdout


@pytest.fixture(scope="module")
def bad_use(libibverbs, tmp_path_factory):
    """tests/integration/c/bad_use.c, compiled against rdma-core's headers (linked against
    the system libibverbs, run on rnicd's through `rnic exec`)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c") / "bad_use"
    src = os.path.join(ROOT, "tests", "integration", "c", "bad_use.c")
    r = subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe), src, "-libverbs"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(exe)


def test_bad_use_gets_documented_errors(bad_use, rnicd):
    d = rnicd("a")
    r = run(d, bad_use)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), r.stdout + r.stderr


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_daemon_going_away_is_a_fatal_event_then_errors(bad_use, rnicd, how):
    """The daemon stopped (SIGTERM) or SIGKILLed (its engines die with it): the program gets
    IBV_EVENT_DEVICE_FATAL, then errors from its verbs, and does not hang."""
    d = rnicd("a", extra=("--engines", "2"))
    p = subprocess.Popen(rnic_exec(d, bad_use, "fatal"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        if how == "killed":
            engines = d.engine_pids()
            d.proc.kill()
            d.proc.wait(10)
            deadline = time.monotonic() + 10    # PDEATHSIG: no engine outlives its daemon
            while any(_running(pid) for pid in engines):
                assert time.monotonic() < deadline, "an engine outlived its daemon"
                time.sleep(0.05)
        else:
            d.stop()
        out, _ = p.communicate("go\n", timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and out.rstrip().endswith("OK"), out


def _compile(tmp_path_factory, name):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c") / name
    src = os.path.join(ROOT, "tests", "integration", "c", f"{name}.c")
    r = subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe), src, "-libverbs"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(exe)


def run_pair(a, b, exe, *args, rounds=1):
    """`exe server` on daemon a and `exe client` on daemon b; in each of `rounds` rounds each
    prints one line ("INFO ..." first), which the other reads on stdin. Returns both
    (returncode, output)."""
    procs = [subprocess.Popen(rnic_exec(d, exe, role, *args), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for d, role in ((a, "server"), (b, "client"))]
    outs = [[], []]
    lines = [queue.Queue(), queue.Queue()]

    def reader(i):
        for line in procs[i].stdout:
            outs[i].append(line)
            if not line.startswith("librnic:"):     # RNIC_DEBUG's messages are not turns
                lines[i].put(line)
        lines[i].put("")

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        for k in range(rounds):
            got = []
            for i in (0, 1):
                try:
                    got.append(lines[i].get(timeout=TIMEOUT))
                except queue.Empty:
                    got.append("")
            for i, line in enumerate(got):
                ok = line.strip() and (k or line.startswith("INFO"))
                assert ok, f"round {k}: side {i} said {line!r}: " + "".join(outs[0] + outs[1])
                procs[1 - i].stdin.write(line)
                procs[1 - i].stdin.flush()
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for t in threads:
            t.join(timeout=5)
    return [(p.returncode, "".join(out)) for p, out in zip(procs, outs, strict=True)]


@pytest.fixture(scope="module")
def ex_verbs(libibverbs, tmp_path_factory):
    return _compile(tmp_path_factory, "ex_verbs")


def test_extended_cq_and_qp_between_daemons(ex_verbs, rnicd):
    """ibv_create_cq_ex (start/next/end_poll, ibv_wc_read_*) and ibv_create_qp_ex's ibv_wr_*
    post API: WRITE, SEND_WITH_IMM inline, READ into two SGEs, both atomics, an aborted and
    a failing batch (tests/integration/c/ex_verbs.c; each side checks what it sees)."""
    for rc, out in run_pair(rnicd("a"), rnicd("b"), ex_verbs):
        assert rc == 0 and out.rstrip().endswith("OK"), out


@pytest.fixture(scope="module")
def mw(libibverbs, tmp_path_factory):
    return _compile(tmp_path_factory, "mw")


def test_memory_windows_between_daemons(mw, rnicd):
    """ibv_alloc_mw, ibv_bind_mw (type 1), ibv_wr_bind_mw (type 2), LOCAL_INV, and a peer's
    writes through both windows, SEND_WITH_INV, then a write refused through the invalidated
    window (tests/integration/c/mw.c)."""
    for rc, out in run_pair(rnicd("a"), rnicd("b"), mw, rounds=3):
        assert rc == 0 and out.rstrip().endswith("OK"), out


@pytest.mark.parametrize("events", [False, True], ids=["poll", "events"])
def test_xsrq_pingpong(libibverbs, rnicd, events):
    """rdma-core's ibv_xsrq_pingpong -g 0 (XRC: ibv_open_xrcd on a file, XRC SRQs and their
    ibv_get_srq_num, XRC_SEND/XRC_RECV QPs, wr.qp_type.xrc.remote_srqn) between daemons."""
    if shutil.which("ibv_xsrq_pingpong") is None:
        pytest.skip("ibv_xsrq_pingpong not in ibverbs-utils")
    a, b = rnicd("a"), rnicd("b")
    args = ["-d", "rnic0", "-g", "0", "-p", str(_free_port()), "-n", "20", "-m", "1024"]
    args += ["-e"] if events else []    # -e: completion channel on the SRQs' CQ
    client, server_rc, sout = client_server(a, b, "ibv_xsrq_pingpong", args)
    assert client.returncode == 0 and server_rc == 0, client.stdout + client.stderr + sout
    for out in (client.stdout, sout):   # each side checks the messages its SRQ received
        assert out.rstrip().endswith("success") and "SRQN" in out, out


@pytest.fixture(scope="module")
def import_rereg(libibverbs, tmp_path_factory):
    return _compile(tmp_path_factory, "import_rereg")


def test_import_and_rereg_mr(import_rereg, rnicd):
    """ibv_import_device/import_pd/import_mr/unimport_* in a forked child sharing the context,
    and ibv_rereg_mr with a write landing in the new pages (tests/integration/c/import_rereg.c)."""
    r = run(rnicd("a"), import_rereg)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), r.stdout + r.stderr


@pytest.fixture(scope="module")
def xrc_ud_ex(libibverbs, tmp_path_factory):
    return _compile(tmp_path_factory, "xrc_ud_ex")


def test_wr_api_on_xrc_and_ud_between_daemons(xrc_ud_ex, rnicd):
    """ibv_wr_set_xrc_srqn from an XRC INI QP into an XRC SRQ behind a TGT QP, and
    ibv_wr_set_ud_addr with inline data and an immediate on UD; ibv_open_xrcd,
    ibv_create_srq_ex and ibv_close_xrcd errors (tests/integration/c/xrc_ud_ex.c)."""
    for rc, out in run_pair(rnicd("a"), rnicd("b"), xrc_ud_ex, rounds=2):
        assert rc == 0 and out.rstrip().endswith("OK"), out


def test_perftest_keeps_the_send_queue_full(libibverbs, rnicd):
    """ib_read_bw -D: perftest keeps exactly tx_depth WRs in flight and posts the moment it
    polls a completion, so a WQE's ring slot must be free before its CQE shows (IBTA 10.8.3;
    rnicd once published the CQE first and the post failed with ENOMEM after thousands of
    READs; this run catches that order about every other time)."""
    if shutil.which("ib_read_bw") is None:
        pytest.skip("perftest not installed (make sysdeps)")
    a, b = rnicd("a"), rnicd("b")
    args = ["-d", "rnic0", "-x", "0", "-p", str(_free_port()), "-s", "65536", "-D", "4"]
    client, server_rc, sout = client_server(a, b, "ib_read_bw", args)
    assert client.returncode == 0 and server_rc == 0, client.stdout + client.stderr + sout
    assert "Couldn't post send" not in client.stderr, client.stderr


def test_a_poller_on_its_engines_cpu_is_yielded_to(libibverbs, rnicd):
    """The C library's empty poll says on which CPU the program waits (the CQ ring's
    poller_cpu): ibv_rc_pingpong pinned to its daemon's engine 0 CPU (its CQ's, vector 0) is
    yielded to; its peer, pinned to a CPU other than its own engine 0's, never is."""
    mask = sorted(os.sched_getaffinity(0))
    if len(mask) < 2 or shutil.which("taskset") is None:
        pytest.skip("needs 2 CPUs and taskset (util-linux) to pin the two programs")
    spread = ("--engines", "2")
    a, b = rnicd("a", extra=spread), rnicd("b", extra=spread)
    on_a = next(r["cpu"] for r in engines(a) if r["id"] == 0)
    off_b = next(c for c in mask if c != next(r["cpu"] for r in engines(b) if r["id"] == 0))
    port = _free_port()
    args = ["-d", "rnic0", "-g", "0", "-p", str(port), "-n", "200"]

    def pinned(cpu, argv):          # taskset execs: the pid stays the program's
        return ["taskset", "-c", str(cpu), *argv]

    client, server_rc, sout = server_then_client(
        pinned(on_a, rnic_exec(a, "ibv_rc_pingpong", *args)),
        pinned(off_b, rnic_exec(b, "ibv_rc_pingpong", *args, a.ip)),
        lambda srv: tcp_listening(srv.pid, port), timeout=TIMEOUT)
    assert client.returncode == 0 and server_rc == 0, client.stderr + sout
    assert next(r["poller_yields"] for r in engines(a) if r["id"] == 0) > 0
    assert sum(r["poller_yields"] for r in engines(b)) == 0

"""`rnic ping` (rping for rnicd) between two daemons on loopback, as a user runs it."""
import select
import subprocess
import sys
import threading
import time

import rnic.enums as e
from rnic import ping
from rnic.cmid import CMID, RAI_PASSIVE, AddrInfo, CMEventType
from rnic.mr import MR
from rnic.qp import QPCap, QPInitAttr
from rnic.wr import SGE, SendWR


def ping_cmd(d, *args):
    return [sys.executable, "-m", "rnic.tool", "--socket", d.socket, "ping", *args]


def run_ping(d, *args, timeout=60):
    return subprocess.run(ping_cmd(d, *args), capture_output=True, text=True, timeout=timeout)


def start_server(d, *args):
    """A `rnic ping -s` process on daemon d and the port it listens on (from its first line)."""
    proc = subprocess.Popen(ping_cmd(d, "-s", "-p", "0", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("rnic ping: listening on "):
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.communicate()}")
    ip, port = line.split()[-1].rsplit(":", 1)
    assert ip == d.ip
    return proc, int(port)


def finish(proc, timeout=30):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_client_verifies_every_iteration_and_both_exit_0(two_daemons):
    da, db = two_daemons
    srv, port = start_server(db, "-v")
    try:
        r = run_ping(da, "-c", "-a", db.ip, "-p", str(port), "-C", "5", "-S", "4096", "-v")
    finally:
        rc, out, err = finish(srv)
    assert r.returncode == 0, r.stderr
    data = [line.removeprefix("ping data: ") for line in r.stdout.splitlines()
            if line.startswith("ping data: ")]
    assert data == [ping.pattern(i, 4096).decode() for i in range(5)]
    assert len(set(data)) == 5 and all(len(x) == 4096 for x in data)
    assert f"5 iterations of 4096 bytes verified with {db.ip}:{port}" in r.stdout
    assert "round trip min/avg/max" in r.stdout
    assert rc == 0, err
    assert out.count("server ping data: rnic-ping: ") == 5
    assert f"connection from {da.ip}:" in out and "done after 5 iteration(s)" in out


def test_no_server_is_rejected_quickly(two_daemons):
    da, db = two_daemons
    t0 = time.monotonic()
    r = run_ping(da, "-c", "-a", db.ip, "-p", "7999", "-C", "1")
    took = time.monotonic() - t0
    assert r.returncode == 1 and r.stdout == ""
    assert f"connection to {db.ip}:7999 rejected" in r.stderr
    assert "INVALID_SERVICE_ID" in r.stderr
    assert took < 4.0, took        # a REJ, not the ~4.3 s of REQ retries to a silent peer


def test_server_count_ends_the_connection_and_size_limit_is_enforced(two_daemons):
    da, db = two_daemons
    srv, port = start_server(db, "-C", "2")
    try:
        r = run_ping(da, "-c", "-a", db.ip, "-p", str(port), "-C", "3")
    finally:
        rc, out, err = finish(srv)
    assert rc == 0, err
    assert r.returncode == 1 and "iteration 3: the connection" in r.stderr
    srv, port = start_server(db, "-S", "100")
    try:
        r = run_ping(da, "-c", "-a", db.ip, "-p", str(port), "-S", "1000")
    finally:
        rc, out, err = finish(srv)
    assert r.returncode == 1 and "longer than the server's -S" in r.stderr
    assert rc == 1 and "limit 100" in err


def corrupting_server(d, port, ready, errors):
    """Speaks rnic ping's protocol but writes back the pattern with byte 20 flipped."""
    try:
        with CMID(creator=AddrInfo(src=d.ip, service=str(port), flags=RAI_PASSIVE),
                  socket=d.socket) as lid:
            lid.listen()
            ready.set()
            cid = lid.get_request(timeout=20)
            cid.create_qp(QPInitAttr(cap=QPCap(max_send_wr=4, max_recv_wr=2)))
            req = MR(cid.pd, ping.REQ.size, e.IBV_ACCESS_LOCAL_WRITE)
            out = MR(cid.pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
            done = MR(cid.pd, ping.DONE.size, e.IBV_ACCESS_LOCAL_WRITE)
            cid.post_recv(req)
            cid.accept()
            assert cid.get_recv_comp(timeout=10).status == e.IBV_WC_SUCCESS
            _, _, n, sink, sink_rkey, _ = ping.REQ.unpack(req.read(ping.REQ.size))
            bad = bytearray(ping.pattern(0, n))
            bad[20] ^= 1
            out.write(bytes(bad))
            w = SendWR(wr_id=1, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                       sg=[SGE(out.buf, n, out.lkey)])
            w.set_wr_rdma(sink_rkey, sink)
            cid.qp.post_send(w)
            done.write(ping.DONE.pack(ping.DONE_OK))
            cid.qp.post_send(SendWR(wr_id=2, num_sge=1, sg=[SGE(done.buf, 4, done.lkey)]))
            for _ in range(2):
                assert cid.get_send_comp(timeout=10).status == e.IBV_WC_SUCCESS
            while True:
                ev = cid.event_channel.get_cm_event(timeout=10)
                assert ev is not None, "no DISCONNECTED"
                if ev.event_type == CMEventType.RDMA_CM_EVENT_DISCONNECTED:
                    break
            cid.close()
    except BaseException as exc:
        errors.append(exc)
        ready.set()


def test_data_mismatch_names_the_first_differing_offset(two_daemons):
    da, db = two_daemons
    ready, errors = threading.Event(), []
    t = threading.Thread(target=corrupting_server, args=(db, 7475, ready, errors), daemon=True)
    t.start()
    assert ready.wait(10)
    r = run_ping(da, "-c", "-a", db.ip, "-p", "7475", "-C", "3")
    t.join(20)
    assert not t.is_alive() and not errors, errors
    assert r.returncode == 1
    assert "iteration 1: data mismatch at offset 20" in r.stderr
    assert "ping data" not in r.stdout and "verified" not in r.stdout


def test_help_and_bad_arguments():
    tool = [sys.executable, "-m", "rnic.tool", "ping"]
    r = subprocess.run(tool + ["--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    words = " ".join(r.stdout.split())
    for text in ("-s, --server", "-c, --client", "RDMA READ", "RDMA WRITE", "Exit status"):
        assert text in words
    for bad in (["-c"], ["-c", "-a", "127.0.0.1", "-S", "8"], ["-c", "-a", "127.0.0.1",
                                                             "-C", "0"], ["-s", "-c"]):
        r = subprocess.run(tool + bad, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr, bad

"""rnicd's librdmacm.so.1 (clients/c) under unmodified Debian programs, through `rnic exec`,
between two daemons on loopback (server on one, client on the other): rdmacm-utils' rping
(data verified, also with faults on both daemons and with self-modified QPs), ucmatose,
udaddy (UD over the CM: SIDR), rdma_server/rdma_client (rdma_getaddrinfo, rdma_create_ep,
the synchronous mode), perftest over rdma_cm (-R), and the `rnic` Python client's CMID
talking to the C library across daemons."""
import os
import shutil
import sys
import textwrap

import pytest
from clibs import (
    ROOT,
    cm_listening,
    need_clib,
    perftest_cm_runs,
    server_then_client,
)
from clibs import rnic_exec as _exec
from rnic import clib

TIMEOUT = 60


@pytest.fixture(scope="module")
def librdmacm():
    return need_clib("rping")


def rnic_exec(daemon, *cmd):
    return _exec(daemon.socket, *cmd)


_ports = iter(range(7500 + os.getpid() % 1000 * 10, 1 << 16))


def pair(server_cmd, client_cmd, a, b, port, timeout=TIMEOUT):
    """Run the server on daemon a, then (once it listens on rdma_cm port) the client on
    daemon b; both outputs and codes. perftest runs again if it lost its own listen race."""
    def run():
        return server_then_client(rnic_exec(a, *server_cmd), rnic_exec(b, *client_cmd),
                                  lambda srv: int(port) in cm_listening(a.socket),
                                  timeout=timeout)
    cl, src, sout = perftest_cm_runs(run) if server_cmd[0].startswith("ib_") else run()
    return cl.returncode, cl.stdout + cl.stderr, src, sout


def check_rping(a, b, count=100, extra=()):
    port = str(next(_ports))
    crc, cout, src, sout = pair(
        ["rping", "-s", "-a", a.ip, "-p", port, "-V", "-C", str(count), *extra],
        ["rping", "-c", "-a", a.ip, "-p", port, "-v", "-V", "-C", str(count), *extra], a, b,
        port)
    assert crc == 0, cout
    assert src == 0, sout
    lines = [ln for ln in cout.splitlines() if ln.startswith("ping data: ")]
    assert len(lines) == count, cout
    # rping's pattern: "rdma-ping-N: ", then characters 'A'..'z' from 'A' + N % 58 on,
    # wrapping; the client prints the buffer the server RDMA READ from it and RDMA WROTE
    # back (and -V compares it with what it sent)
    for i, ln in enumerate(lines):
        body = ln[len("ping data: "):]
        head = f"rdma-ping-{i}: "
        assert body.startswith(head), ln
        chars = body[len(head):]
        want = "".join(chr(65 + (i % 58 + k) % 58) for k in range(len(chars)))
        assert chars == want and len(body) == 63, ln
    assert "server DISCONNECT EVENT" in sout       # the client need not wait for its own


def test_rping_data_verified(librdmacm, two_daemons):
    a, b = two_daemons
    check_rping(a, b)


def test_rping_self_modified_qp(librdmacm, two_daemons):
    """rping -q: the QP is not the id's; rdma_init_qp_attr moves it and rdma_establish sends
    the RTU (rdma_cm's external QP path)."""
    a, b = two_daemons
    check_rping(a, b, 20, ["-q"])


def test_rping_with_faults_keeps_data_intact(librdmacm, rnicd):
    a, b = rnicd("a", fault="drop=0.02"), rnicd("b", fault="drop=0.02")
    check_rping(a, b)


@pytest.mark.parametrize("extra", [[], ["-c", "4"], ["-m"]], ids=["one", "four", "migrate"])
def test_ucmatose(librdmacm, two_daemons, extra):
    a, b = two_daemons
    port = str(next(_ports))
    crc, cout, src, sout = pair(["ucmatose", "-p", port, *extra[:2]],
                                ["ucmatose", "-s", a.ip, "-p", port, *extra], a, b, port)
    assert crc == 0 and "return status 0" in cout, cout
    assert src == 0 and "return status 0" in sout, sout
    assert "data transfers complete" in cout and "data transfers complete" in sout
    if extra == ["-m"]:
        assert "migrating to new event channel" in cout


def test_udaddy_sidr(librdmacm, two_daemons):
    """UD over the CM: the client's ESTABLISHED carries the server's QPN, Q_Key and an AH
    (SIDR); the server answers with AHs made from the work completions."""
    a, b = two_daemons
    crc, cout, src, sout = pair(["udaddy"], ["udaddy", "-s", a.ip], a, b, 7174)  # its port
    assert crc == 0 and "return status 0" in cout, cout
    assert src == 0 and "return status 0" in sout, sout
    assert "data transfers complete" in cout and "data transfers complete" in sout


def test_rdma_server_client(librdmacm, two_daemons):
    """rdma_getaddrinfo, rdma_create_ep, rdma_get_request, synchronous ids, the
    rdma_verbs.h helpers on the CQs rdma_create_qp made."""
    a, b = two_daemons
    port = str(next(_ports))
    crc, cout, src, sout = pair(["rdma_server", "-p", port],
                                ["rdma_client", "-s", a.ip, "-p", port], a, b, port)
    assert crc == 0 and "rdma_client: end 0" in cout, cout
    assert src == 0 and "rdma_server: end 0" in sout, sout


@pytest.mark.parametrize("kind", ["r", "x"])
def test_rdma_xserver_xclient(librdmacm, two_daemons, kind):
    """r: rdma_xclient posts 16 inline bytes on a QP created with max_send_sge 1 and no
    max_inline_data: the QP's inline room is its SGE room (16 bytes), as on rxe and mlx5.
    x: XRC over the CM (Annex A14): the REQ says XRC (transport type 3, extended 1), the
    server's id gets an XRC TGT QP and an XRC SRQ in the device's XRC domain, and the
    client's INI QP sends to the SRQ number the REP's private data carries."""
    a, b = two_daemons
    port = str(next(_ports))
    crc, cout, src, sout = pair(["rdma_xserver", "-p", port, "-c", kind],
                                ["rdma_xclient", "-s", a.ip, "-p", port, "-c", kind], a, b,
                                port)
    assert crc == 0 and "rdma_xclient: end 0" in cout, cout
    assert src == 0 and "rdma_xserver: end 0" in sout, sout


@pytest.mark.parametrize("prog", ["ib_write_bw", "ib_read_bw", "ib_send_bw", "ib_atomic_bw",
                                  "ib_write_lat", "ib_send_lat", "ib_read_lat"])
def test_perftest_over_rdma_cm(librdmacm, two_daemons, prog):
    if shutil.which(prog) is None:
        pytest.skip("perftest not installed (make sysdeps)")
    a, b = two_daemons
    port = str(next(_ports) + 10000)
    args = ["-d", "rnic0", "-R", "-p", port, "-n", "200"]
    crc, cout, src, sout = pair([prog, *args], [prog, *args, a.ip], a, b, port)
    assert crc == 0, cout
    assert src == 0, sout
    assert "#bytes" in cout and "200" in cout.split("#bytes", 1)[1], cout


PY_SERVER = textwrap.dedent("""
    import sys
    from rnic.cmid import CMID, AddrInfo, RAI_PASSIVE, RDMA_PS_TCP
    from rnic.qp import QPCap, QPInitAttr
    ip, port = sys.argv[1], sys.argv[2]
    cap = QPCap(max_send_wr=1, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
    lst = CMID(creator=AddrInfo(src=ip, service=port, port_space=RDMA_PS_TCP,
                                flags=RAI_PASSIVE),
               qp_init_attr=QPInitAttr(qp_type=2, cap=cap, sq_sig_all=1))
    lst.listen()
    print("listening", flush=True)
    conn = lst.get_request()
    mr = conn.reg_msgs(16)
    conn.post_recv(mr, 16)
    conn.accept()
    wc = conn.get_recv_comp()
    assert wc.status == 0 and wc.byte_len == 16, wc
    mr.write(b"rnic-python-cmid", 16)
    conn.post_send(mr, length=16)
    assert conn.get_send_comp().status == 0
    conn.disconnect()
    print("python server: end 0", flush=True)
""")

PY_CLIENT = textwrap.dedent("""
    import sys
    from rnic.cmid import CMID, AddrInfo, RDMA_PS_TCP
    from rnic.qp import QPCap, QPInitAttr
    ip, port = sys.argv[1], sys.argv[2]
    cap = QPCap(max_send_wr=1, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
    c = CMID(creator=AddrInfo(dst=ip, service=port, port_space=RDMA_PS_TCP),
             qp_init_attr=QPInitAttr(qp_type=2, cap=cap, sq_sig_all=1))
    send, recv = c.reg_msgs(16), c.reg_msgs(16)
    recv.write(b"x" * 16, 16)
    c.post_recv(recv, 16)
    c.connect()
    send.write(b"hello from rnic!", 16)
    c.post_send(send, length=16)
    assert c.get_send_comp().status == 0
    wc = c.get_recv_comp()
    assert wc.status == 0 and wc.byte_len == 16, wc
    assert recv.read(16, 0) == bytes(16), recv.read(16, 0)   # rdma_server's zeroed reply
    c.disconnect()
    print("python client: end 0", flush=True)
""")


def test_python_cmid_server_with_c_rdma_client(librdmacm, two_daemons, tmp_path):
    """The rnic Python client (rnic.cmid) listens on daemon a; rdma_client, on rnicd's C
    librdmacm, connects from daemon b: a SEND each way and a disconnect."""
    a, b = two_daemons
    port = str(next(_ports))
    script = tmp_path / "server.py"
    script.write_text(PY_SERVER)
    env = clib.exec_env(a.socket)
    env["PYTHONPATH"] = os.path.join(ROOT, "clients", "python")

    def listening(server):
        line = server.stdout.readline()
        assert line.strip() == "listening", line
        return True
    client, src, sout = server_then_client(
        [sys.executable, str(script), a.ip, port],
        rnic_exec(b, "rdma_client", "-s", a.ip, "-p", port), listening, timeout=TIMEOUT,
        server_env=env)
    assert client.returncode == 0 and "rdma_client: end 0" in client.stdout, client
    assert src == 0 and "python server: end 0" in sout, sout


def test_c_rdma_server_with_python_cmid_client(librdmacm, two_daemons, tmp_path):
    a, b = two_daemons
    port = str(next(_ports))
    script = tmp_path / "client.py"
    script.write_text(PY_CLIENT)
    env = clib.exec_env(b.socket)
    env["PYTHONPATH"] = os.path.join(ROOT, "clients", "python")
    client, src, sout = server_then_client(
        rnic_exec(a, "rdma_server", "-p", port), [sys.executable, str(script), a.ip, port],
        lambda server: int(port) in cm_listening(a.socket), timeout=TIMEOUT, client_env=env)
    assert client.returncode == 0 and "python client: end 0" in client.stdout, client
    assert src == 0 and "rdma_server: end 0" in sout, sout


def test_write_bw_with_faults_on_both_daemons(librdmacm, rnicd):
    """ib_write_bw over rdma_cm with 2% of the datagrams dropped on both daemons: RC's
    retransmission carries it through, and both sides report their row."""
    if shutil.which("ib_write_bw") is None:
        pytest.skip("perftest not installed (make sysdeps)")
    a, b = rnicd("a", fault="drop=0.02,seed=3"), rnicd("b", fault="drop=0.02,seed=4")
    port = str(next(_ports) + 10000)
    args = ["-d", "rnic0", "-R", "-p", port, "-n", "300", "-s", "65536"]
    crc, cout, src, sout = pair(["ib_write_bw", *args], ["ib_write_bw", *args, a.ip], a, b,
                                port, timeout=120)
    assert crc == 0, cout
    assert src == 0, sout
    assert any(ln.split()[:2] == ["65536", "300"] for ln in cout.splitlines()), cout


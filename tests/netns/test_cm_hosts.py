"""rdma_cm between hosts in network namespaces: address resolution through each host's
routing table, connect/accept/reject/disconnect with private data between every pair, and
1,000 connections accepted by establishment offload."""
import itertools
import json
import os
import subprocess
import sys

PEER = os.path.join(os.path.dirname(__file__), "cm_peer.py")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _server(host, mode, port, n):
    srv = host.popen(sys.executable, PEER, mode, host.socket, host.ip, str(port), str(n),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = srv.stdout.readline()
    assert first and json.loads(first) == {"listening": True}, srv.stderr.read()
    return srv


def test_cm_connect_reject_disconnect_between_every_pair(hosts):
    hs = hosts(3)
    for port, (server, client) in enumerate(itertools.permutations(hs, 2), start=19100):
        srv = _server(server, "serve", port, 2)
        try:
            runs = [client.run(sys.executable, PEER, "connect", client.socket, server.ip,
                               str(port), data, capture_output=True, text=True, timeout=60)
                    for data in (f"hello {client.ip}", "reject me")]
            for r in runs:
                assert r.returncode == 0, r.stderr
            ok, refused = (_json_lines(r.stdout)[0] for r in runs)
            assert ok == {"established": f"hi hello {client.ip}", "source": client.ip}
            assert refused == {"error": 111, "status": 28, "private_data": "no thanks"}
            stdout, stderr = srv.communicate(timeout=60)
            assert srv.returncode == 0, stderr
            assert _json_lines(stdout) == [
                {"accepted": f"hello {client.ip}", "peer": client.ip,
                 "disconnected": "RDMA_CM_EVENT_DISCONNECTED"},
                {"rejected": "reject me", "peer": client.ip}]
        finally:
            if srv.poll() is None:
                srv.kill()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_offload_accepts_1000_connections_in_bulk(hosts):
    """Seed feature: the listener's daemon completes every handshake from a template and
    tells the application in bulk; receives are pre-posted (each takes one SEND)."""
    server, client = hosts(2)
    n = 1000
    rss_before = _rss_kib(server.proc.pid)
    srv = _server(server, "offload-serve", 19200, n)
    try:
        r = client.run(sys.executable, PEER, "offload-connect", client.socket, server.ip,
                       "19200", str(n), capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr
        rss_after = _rss_kib(server.proc.pid)
        stdout, stderr = srv.communicate(timeout=120)
        assert srv.returncode == 0, stderr
    finally:
        if srv.poll() is None:
            srv.kill()
    active, = _json_lines(r.stdout)
    passive, = _json_lines(stdout)
    print(f"\n{n} connections: {active['seconds']} s ({active['rate']} conn/s, connects "
          f"posted in {active['post_seconds']} s); {passive['notifications']} bulk "
          f"notifications; server rnicd RSS {rss_before / 1024:.1f} -> "
          f"{rss_after / 1024:.1f} MiB", flush=True)
    assert active["established"] == n and active["sends_completed"] == n
    assert passive["connections"] == n and passive["notifications"] < 100
    assert passive["received"] == n and passive["verified"] == n
    assert passive["qp_state"] == 3 and passive["distinct_peers"] == 1      # RTS


def test_rnic_ping_between_every_pair(hosts):
    """`rnic ping` (rdma_cm connect, SEND, RDMA READ + WRITE, verify, disconnect) from each
    host to each other, the client resolving the server through its routing table."""
    hs = hosts(3)
    for server, client in itertools.permutations(hs, 2):
        srv = server.popen(sys.executable, "-m", "rnic.tool", "--socket", server.socket,
                           "ping", "-s", "-p", "7174", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        try:
            assert "listening on" in srv.stdout.readline(), srv.stderr.read()
            r = client.run(sys.executable, "-m", "rnic.tool", "--socket", client.socket,
                           "ping", "-c", "-a", server.ip, "-p", "7174", "-C", "20", "-S",
                           "8192", "-v", capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            assert r.stdout.count("ping data: rnic-ping: ") == 20, r.stdout
            assert srv.wait(30) == 0, srv.stderr.read()
        finally:
            if srv.poll() is None:
                srv.kill()

"""Three hosts in network namespaces, rnicd in each, talking over veths and a bridge."""
import itertools
import json
import os
import sys

import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.wr import SGE, RecvWR, SendWR


def test_rc_between_every_pair_of_hosts(hosts):
    hs = hosts(3)
    for ha, hb in itertools.permutations(hs, 2):
        a, b = Side(ha), Side(hb)
        assert a.gid.raw[12:] == bytes(int(x) for x in ha.ip.split("."))   # GID 0 = its IP
        connect(a, b, mtu=e.IBV_MTU_1024)
        data = os.urandom(10000)
        a.mr.write(data, len(data), 0)
        b.qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(b.mr.buf, 16384, b.mr.lkey)]))
        a.qp.post_send(SendWR(wr_id=1, opcode=e.IBV_WR_SEND, num_sge=1,
                              sg=[SGE(a.mr.buf, 10000, a.mr.lkey)]))
        r = SendWR(wr_id=2, opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                   sg=[SGE(a.mr.buf + 65536, 10000, a.mr.lkey)])
        r.set_wr_rdma(b.mr.rkey, b.mr.buf)
        a.qp.post_send(r)
        assert [w.status for w in poll_n(a.cq, 2)] == [e.IBV_WC_SUCCESS] * 2
        assert poll_n(b.cq, 1)[0].byte_len == 10000
        assert b.mr.read(10000, 0) == data and a.mr.read(10000, 65536) == data
        a.close()
        b.close()


def test_perf_write_bw_between_every_pair(hosts):
    hs = hosts(3)
    for port, (server, client) in enumerate(itertools.permutations(hs, 2), start=18600):
        srv = server.popen(sys.executable, "-m", "rnicd.tool", "--socket", server.socket,
                           "perf", "write_bw", "-p", str(port), stdout=open(os.devnull, "w"))
        try:
            r = client.run(sys.executable, "-m", "rnicd.tool", "--socket", client.socket,
                           "perf", "write_bw", server.ip, "-p", str(port), "-s", "65536",
                           "-n", "300", "--json", capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr + diagnose(server, client)
            row = json.loads(r.stdout)
            assert row["iterations"] == 300 and row["bw_avg_MBps"] > 0
            assert srv.wait(30) == 0
        finally:
            if srv.poll() is None:
                srv.kill()


def diagnose(*hs) -> str:
    """Counters and log tails of the hosts, for a failure message."""
    out = []
    for h in hs:
        stat = h.run(sys.executable, "-m", "rnicd.tool", "--socket", h.socket, "stat",
                     capture_output=True, text=True, timeout=30).stdout
        out.append(f"\n--- {h.name} {h.ip}\n{stat}{open(h.log).read()[-500:]}")
    return "".join(out)

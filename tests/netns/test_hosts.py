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
        srv = server.popen(sys.executable, "-m", "rnic.tool", "--socket", server.socket,
                           "perf", "write_bw", "-p", str(port), stdout=open(os.devnull, "w"))
        try:
            r = client.run(sys.executable, "-m", "rnic.tool", "--socket", client.socket,
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
        stat = h.run(sys.executable, "-m", "rnic.tool", "--socket", h.socket, "stat",
                     capture_output=True, text=True, timeout=30).stdout
        out.append(f"\n--- {h.name} {h.ip}\n{stat}{open(h.log).read()[-500:]}")
    return "".join(out)


def test_gid_table_and_port_state_follow_the_netdev(hosts):
    """Adding/removing an address changes the GID table within 1 s with IBV_EVENT_GID_CHANGE;
    link down/up gives IBV_EVENT_PORT_ERR / IBV_EVENT_PORT_ACTIVE (netlink, live)."""
    import time

    from rnic.device import Context
    (h,) = hosts(1)
    extra = h.ip.rsplit(".", 1)[0] + ".99"
    with Context(socket=h.socket) as ctx:
        assert ctx.query_gid(1, 0).raw[12:] == bytes(int(x) for x in h.ip.split("."))
        gid = bytes(10) + b"\xff\xff" + bytes(int(x) for x in extra.split("."))

        def gids():
            return [ctx.query_gid(1, i).raw for i in range(ctx.query_port(1).gid_tbl_len)]

        def wait_gid(present: bool) -> float:
            """Seconds until a GID_CHANGE event shows the table with(out) the address (other
            changes, such as the IPv6 link-local address appearing, may come first)."""
            t0 = time.monotonic()
            while True:
                ev = ctx.get_async_event(timeout=5)
                assert ev is not None, "no IBV_EVENT_GID_CHANGE"
                if ev.event_type == e.IBV_EVENT_GID_CHANGE and (gid in gids()) == present:
                    assert ev.port_num == 1
                    return time.monotonic() - t0

        h.run("ip", "addr", "add", f"{extra}/24", "dev", "eth0", check=True)
        assert wait_gid(True) < 1.0
        h.run("ip", "addr", "del", f"{extra}/24", "dev", "eth0", check=True)
        assert wait_gid(False) < 1.0
        h.run("ip", "link", "set", "eth0", "down", check=True)
        kinds = set()
        while e.IBV_EVENT_PORT_ERR not in kinds:      # (IPv6 addresses may go too: GID_CHANGE)
            ev = ctx.get_async_event(timeout=5)
            assert ev is not None, f"no PORT_ERR; saw {kinds}"
            kinds.add(ev.event_type)
        assert ctx.query_port(1).state == e.IBV_PORT_DOWN
        h.run("ip", "link", "set", "eth0", "up", check=True)
        while True:
            ev = ctx.get_async_event(timeout=5)
            assert ev is not None, "no PORT_ACTIVE after link up"
            if ev.event_type == e.IBV_EVENT_PORT_ACTIVE:
                break
        assert ctx.query_port(1).state == e.IBV_PORT_ACTIVE


def test_ud_between_all_three_hosts_through_address_handles(hosts):
    from rnic.addr import AH, AHAttr, GlobalRoute
    from rnic.cq import CQ
    from rnic.device import Context
    from rnic.mr import MR
    from rnic.pd import PD
    from rnic.qp import QP, QPAttr, QPCap, QPInitAttr
    hs = hosts(3)
    qkey = 0x11111111
    sides = []
    for h in hs:
        ctx = Context(socket=h.socket)
        pd = PD(ctx)
        mr = MR(pd, 1 << 16, e.IBV_ACCESS_LOCAL_WRITE)
        scq, cq = CQ(ctx, 64, None, None, 0), CQ(ctx, 64, None, None, 0)
        qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_UD, scq=scq, rcq=cq,
                               cap=QPCap(max_send_wr=16, max_recv_wr=16)))
        attr = QPAttr()
        attr.qkey, attr.sq_psn = qkey, 0
        qp.to_init(attr)
        qp.to_rtr(attr)
        qp.to_rts(attr)
        for i in range(4):
            qp.post_recv(RecvWR(wr_id=i, num_sge=1,
                                sg=[SGE(mr.buf + i * 2048, 2048, mr.lkey)]))
        sides.append((h, ctx, pd, mr, scq, cq, qp))
    for (h, _ctx, pd, mr, scq, _cq, qp), (ph, pctx, *_, pqp) in itertools.permutations(sides,
                                                                                       2):
        ah = AH(pd, attr=AHAttr(port_num=1, is_global=1,
                                gr=GlobalRoute(dgid=pctx.query_gid(1, 0), sgid_index=0)))
        msg = f"{h.ip}->{ph.ip}".encode()
        mr.write(msg, len(msg), 60000)
        wr = SendWR(wr_id=9, opcode=e.IBV_WR_SEND, num_sge=1,
                    sg=[SGE(mr.buf + 60000, len(msg), mr.lkey)])
        wr.set_wr_ud(ah, pqp.qp_num, qkey)
        qp.post_send(wr)
        assert poll_n(scq, 1)[0].status == e.IBV_WC_SUCCESS
    for h, _ctx, _pd, mr, _scq, cq, _qp in sides:  # each got one datagram from each other
        wcs = poll_n(cq, 2)
        senders = set()
        for wc in wcs:
            assert wc.status == e.IBV_WC_SUCCESS and wc.wc_flags & e.IBV_WC_GRH
            body = mr.read(wc.byte_len - 40, wc.wr_id * 2048 + 40).decode()
            assert body.endswith(f"->{h.ip}")
            senders.add(body.split("->")[0])
        assert senders == {o.ip for o in hs if o is not h}
    for side in sides:
        side[1].close()

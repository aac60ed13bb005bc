"""Completion channels, req_notify, asyncio waits, resize_cq; the daemon as a service:
sd_notify READY/STOPPING, TOML configuration, clean shutdown."""
import asyncio
import os
import socket
import subprocess
import sys
import time

import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.cq import CQ, CompChannel
from rnic.qp import QP, QPCap, QPInitAttr
from rnic.wr import SGE, RecvWR, SendWR


def send(side, wr_id, n=16, flags=e.IBV_SEND_SIGNALED):
    side.qp.post_send(SendWR(wr_id=wr_id, opcode=e.IBV_WR_SEND, num_sge=1,
                             sg=[SGE(side.mr.buf, n, side.mr.lkey)], send_flags=flags))


class ChannelSide(Side):
    """A side whose CQ reports through a completion channel."""

    def __init__(self, daemon):
        super().__init__(daemon)
        self.channel = CompChannel(self.ctx)
        self.ccq = CQ(self.ctx, 64, None, self.channel, 0)
        self.qp = QP(self.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.ccq, rcq=self.ccq,
                                         cap=QPCap(max_send_wr=16, max_recv_wr=16)))


def test_req_notify_and_solicited_events(two_daemons):
    da, db = two_daemons
    a, b = Side(da), ChannelSide(db)
    connect(a, b)
    for i in range(4):
        b.qp.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(b.mr.buf, 64, b.mr.lkey)]))
    b.ccq.req_notify()                       # next completion of any kind
    send(a, 1)
    assert b.channel.get_cq_event(timeout=10) is b.ccq
    b.ccq.ack_events(1)
    assert poll_n(b.ccq, 1)[0].wr_id == 0
    b.ccq.req_notify(solicited_only=True)    # only a solicited completion wakes us
    send(a, 2)
    assert poll_n(b.ccq, 1)[0].wr_id == 1
    assert b.channel.get_cq_event(timeout=0.3) is None
    send(a, 3, flags=e.IBV_SEND_SIGNALED | e.IBV_SEND_SOLICITED)
    assert b.channel.get_cq_event(timeout=10) is b.ccq
    b.ccq.ack_events(1)
    assert poll_n(b.ccq, 1)[0].wr_id == 2
    a.close()
    b.close()


async def test_asyncio_wait_does_not_block_the_loop(two_daemons):
    da, db = two_daemons
    a, b = Side(da), ChannelSide(db)
    connect(a, b)
    b.qp.post_recv(RecvWR(wr_id=7, num_sge=1, sg=[SGE(b.mr.buf, 64, b.mr.lkey)]))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    waiter = asyncio.create_task(b.ccq.poll_async(1, timeout=10))
    await asyncio.sleep(0.2)                 # the loop keeps running while nothing arrives
    send(a, 1)
    n, wcs = await waiter
    t.cancel()
    assert n == 1 and wcs[0].wr_id == 7 and ticks >= 5
    a.close()
    b.close()


def test_resize_cq_keeps_pending_completions(two_daemons):
    da, db = two_daemons
    a, b = Side(da), Side(db)
    connect(a, b)
    for i in range(3):
        b.qp.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(b.mr.buf, 64, b.mr.lkey)]))
        send(a, i)
    poll_n(a.cq, 3)
    time.sleep(0.2)
    b.cq.resize(4096)
    assert [w.wr_id for w in poll_n(b.cq, 3)] == [0, 1, 2]
    a.close()
    b.close()


def test_sd_notify_ready_and_stopping(tmp_path):
    """Play systemd's part: NOTIFY_SOCKET receives READY=1 once sockets are bound."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
        ns.bind(path)
        ns.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        proc = subprocess.Popen([sys.executable, "-m", "rnicd.cli", "--bind", "127.0.250.1",
                                 "--ctl-socket", str(tmp_path / "s.sock")], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            msg = ns.recv(4096).decode()
            assert "READY=1" in msg
            assert os.path.exists(tmp_path / "s.sock")
            proc.terminate()
            assert "STOPPING=1" in ns.recv(4096).decode()
            assert proc.wait(10) == 0
            assert not os.path.exists(tmp_path / "s.sock")     # cleaned up
        finally:
            if proc.poll() is None:
                proc.kill()


def test_toml_config_and_flag_precedence(tmp_path, rnicd):
    cfg = tmp_path / "rnicd.toml"
    cfg.write_text('[daemon]\nlog_level = "warning"\n\n[[device]]\nname = "rnic7"\n'
                   'fault = { drop = 0.5, seed = 3 }\n')
    d = rnicd("cfg", extra=["--config", str(cfg)])
    from rnic.device import Context
    with Context(socket=d.socket) as ctx:
        assert ctx.query_device().name == "rnic7"
        assert ctx.get_fault()["drop"] == 0.5
    d2 = rnicd("cfg", fault="drop=0.1", extra=["--config", str(cfg)])
    with Context(socket=d2.socket) as ctx:
        assert ctx.get_fault()["drop"] == 0.1        # the flag wins over the file

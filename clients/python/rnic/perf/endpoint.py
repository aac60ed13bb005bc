"""One side of an `rnic perf` run: resources, the out-of-band TCP handshake, QP setup.

The handshake is what perftest does over its TCP socket, as JSON lines: the client sends the
run parameters and its QP numbers, PSN, GID, rkey and buffer address; the server creates the
same resources and answers with its own; both then move their QPs to RTS.
"""
from __future__ import annotations

import json
import random
import socket
import time
from dataclasses import asdict, dataclass, field

import rnic.enums as e
from rnic.addr import AHAttr, GlobalRoute
from rnic.cq import CQ, CompChannel
from rnic.device import Context
from rnic.errors import RnicError
from rnic.mr import MR
from rnic.pd import PD
from rnic.qp import QP, QPAttr, QPCap, QPInitAttr
from rnicd.wire.abi import RC_ACCESS

ACCESS = RC_ACCESS
MTU_ENUM = {256: e.IBV_MTU_256, 512: e.IBV_MTU_512, 1024: e.IBV_MTU_1024,
            2048: e.IBV_MTU_2048, 4096: e.IBV_MTU_4096}


@dataclass
class Params:
    """What both sides must agree on; the client decides and sends it."""
    test: str
    sizes: list[int]
    iters: int
    duration: float = 0.0          # seconds; when set, it bounds the run instead of iters
    qps: int = 1
    tx_depth: int = 128
    post_list: int = 1
    cq_mod: int = 1                # bandwidth tests: a signaled WR every cq_mod WRs
    inline: int = 0
    mtu: int = 0                   # 0: the port's active MTU (perftest's default)
    event: bool = False
    spread: bool = False           # a CQ per QP, on comp vectors 0, 1, ... (an engine each)
    extra: dict = field(default_factory=dict)

    @property
    def verb(self) -> str:
        return self.test.split("_")[0]          # write, read, send, atomic

    @property
    def is_bw(self) -> bool:
        return self.test.endswith("_bw")


class Link:
    """JSON lines over the out-of-band TCP connection."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.file = sock.makefile("rwb")

    def send(self, obj) -> None:
        self.file.write(json.dumps(obj).encode() + b"\n")
        self.file.flush()

    def recv(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("the other side closed the connection")
        return json.loads(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> "Link":
        deadline = time.monotonic() + timeout
        while True:
            try:
                return cls(socket.create_connection((host, port), timeout=timeout))
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot reach the perf server at {host}:{port}: "
                                          f"{exc}") from None
                time.sleep(0.05)

    @classmethod
    def accept(cls, port: int, timeout: float | None = None) -> "Link":
        with socket.create_server(("0.0.0.0", port), reuse_port=False) as srv:
            srv.settimeout(timeout)
            conn, _ = srv.accept()
        conn.settimeout(None)
        return cls(conn)


class Endpoint:
    def __init__(self, sock_path: str | None, device: str | None, p: Params):
        self.p = p
        self.ctx = Context(name=device, socket=sock_path)
        self.pd = PD(self.ctx)
        self.slot = max(64, -(-max(p.sizes) // 64) * 64)
        self.mr = MR(self.pd, self.slot * p.qps, ACCESS)
        self.channel = CompChannel(self.ctx) if p.event else None
        depth = max(p.tx_depth, 1)
        if p.spread:               # QP q completes on vector q mod num_comp_vectors
            vectors = self.ctx.num_comp_vectors
            self.cqs = [CQ(self.ctx, 2 * max(depth, 32) + 16, None, self.channel, q % vectors)
                        for q in range(p.qps)]
        else:
            self.cqs = [CQ(self.ctx, 2 * max(depth, 32) * p.qps + 16, None, self.channel, 0)]
        self.cq = self.cqs[0]
        room = max(depth, 32)          # latency tests keep one in flight, but reap lazily
        cap = QPCap(max_send_wr=room, max_recv_wr=room, max_send_sge=1, max_recv_sge=1,
                    max_inline_data=p.inline)
        self.qps = [QP(self.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap,
                                           sq_sig_all=0))
                    for cq in (self.cqs[q % len(self.cqs)] for q in range(p.qps))]
        self.index = {qp.qp_num: i for i, qp in enumerate(self.qps)}
        self.psn = random.randrange(1 << 24)
        self.peer: dict = {}
        # path MTU: what was asked for, but no more than this port carries (IBTA 11.2.4)
        active = 128 << self.ctx.query_port(1).active_mtu
        p.mtu = min(p.mtu or active, active)

    def info(self) -> dict:
        return {"gid": self.ctx.query_gid(1, 0).raw.hex(), "qpns": [q.qp_num for q in self.qps],
                "psn": self.psn, "rkey": self.mr.rkey, "addr": self.mr.buf, "slot": self.slot,
                "mtu": self.p.mtu}

    def connect(self, peer: dict) -> None:
        if len(peer["qpns"]) != len(self.qps):
            raise ValueError("the two sides disagree on the number of QPs")
        self.peer = peer
        for qp, peer_qpn in zip(self.qps, peer["qpns"], strict=True):
            a = QPAttr()
            a.qp_access_flags = ACCESS
            a.path_mtu = MTU_ENUM[self.p.mtu]
            a.dest_qp_num, a.rq_psn, a.sq_psn = peer_qpn, peer["psn"], self.psn
            a.max_rd_atomic = a.max_dest_rd_atomic = 16
            a.min_rnr_timer, a.timeout, a.retry_cnt, a.rnr_retry = 1, 14, 7, 7
            a.ah_attr = AHAttr(port_num=1, is_global=1,
                               gr=GlobalRoute(dgid=bytes.fromhex(peer["gid"]), sgid_index=0))
            qp.to_init(a)
            qp.to_rtr(a)
            qp.to_rts(a)

    def local(self, i: int) -> int:
        return self.mr.buf + i * self.slot

    def remote(self, i: int) -> int:
        return self.peer["addr"] + i * self.peer["slot"]

    def poll_any(self, n: int = 64):
        """(count, completions) of the first CQ that has any; (0, []) if none has."""
        for cq in self.cqs:
            got, wcs = cq.poll(n)
            if got:
                return got, wcs
        return 0, []

    def poll(self, n: int = 64) -> list:
        """Completions, waiting for at least one (busy polling, or the completion channel
        with --event). A completion in error ends the run."""
        while True:
            got, wcs = self.poll_any(n)
            if not got and self.channel is not None:
                self.cq.req_notify()
                got, wcs = self.cq.poll(n)
                if not got:
                    if self.channel.get_cq_event(self.cq, timeout=1.0) is not None:
                        self.cq.ack_events(1)
                    continue
            if got:
                for wc in wcs:
                    if wc.status != e.IBV_WC_SUCCESS:
                        raise RnicError(5, f"work request {wc.wr_id} completed with "
                                        f"{e.WCStatus(wc.status).name}")
                return wcs

    def close(self) -> None:
        self.ctx.close()


def handshake_client(link: Link, ep: Endpoint) -> None:
    link.send({"params": asdict(ep.p), "info": ep.info()})
    reply = link.recv()
    if "error" in reply:
        raise ConnectionError(f"perf server: {reply['error']}")
    ep.p.mtu = reply["info"]["mtu"]            # the smaller of the two ports' MTUs
    ep.connect(reply["info"])
    link.send({"connected": True})
    link.recv()


def handshake_server(link: Link, sock_path, device) -> Endpoint:
    hello = link.recv()
    try:
        p = Params(**hello["params"])
        ep = Endpoint(sock_path, device, p)
        ep.connect(hello["info"])
    except (RnicError, ValueError, TypeError, KeyError) as exc:
        link.send({"error": str(exc)})
        raise
    link.send({"info": ep.info()})
    link.recv()
    link.send({"connected": True})
    return ep

"""The rnic client against a fake daemon on a socketpair: framing, fd passing, errors,
async events, object lifetimes, and the ring data path (post_send/post_recv validation and
WQE contents, CQ polling, completion events) on rings built with rnicd.native.ring_init."""
import asyncio
import errno
import gc
import mmap
import os
import pathlib
import socket
import struct
import sys
import threading
import time

import pytest

_CLIENT = pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"
if str(_CLIENT) not in sys.path:
    sys.path.insert(0, str(_CLIENT))

import rnic.enums as e  # noqa: E402
from rnic.addr import AH, AHAttr, GlobalRoute  # noqa: E402
from rnic.cq import CQ, CompChannel  # noqa: E402
from rnic.device import Context  # noqa: E402
from rnic.errors import RnicError  # noqa: E402
from rnic.mr import MR  # noqa: E402
from rnic.pd import PD  # noqa: E402
from rnic.qp import QP, QPAttr, QPCap, QPInitAttr  # noqa: E402
from rnic.srq import SRQ, SrqAttr, SrqInitAttr  # noqa: E402
from rnic.wr import SGE, RecvWR, SendWR  # noqa: E402

from rnicd.wire import ctl  # noqa: E402

try:
    from rnicd import native
except ImportError as exc:  # pragma: no cover - only before `make native`
    native = None
    _NATIVE_WHY = f"rnicd.native is not built ({exc}); run `make native`"

needs_native = pytest.mark.skipif(native is None, reason=globals().get("_NATIVE_WHY", ""))
GID_RAW = bytes(10) + b"\xff\xff\x7f\x00\x00\x01"


def _pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


class FakeRnicd(threading.Thread):
    """Serves the control protocol on one end of a socketpair, with real rings."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.log = []            # (method, args, received fds)
        self.rings = {}          # ("cq", h) / ("sq", h) / ("rq", h) / ("srq", h) -> (mm, view)
        self.mrs = {}            # handle -> mmap of the client's memfd
        self.channels = {}       # handle -> eventfd (daemon side)
        self.before_reply = {}   # method -> list of event bodies to send first
        self.next = 1
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.lock = threading.Lock()

    # ---- plumbing ----------------------------------------------------------------------
    def run(self):
        dec, fds = ctl.Decoder(), []
        while True:
            try:
                data, got, _, _ = socket.recv_fds(self.sock, 65536, 16)
            except OSError:
                return
            if not data:
                return
            fds.extend(got)
            for msg in dec.feed(data):
                mine = [fds.pop(0) for _ in range(msg.get("nfds", 0))]
                self.log.append((msg["m"], msg["a"], mine))
                for ev in self.before_reply.pop(msg["m"], []):
                    self.send({"ev": ev})
                try:
                    result, out = getattr(self, "do_" + msg["m"])(msg["a"], mine)
                    reply = {"id": msg["id"], "r": result, "nfds": len(out)}
                except RnicError as exc:
                    reply, out = {"id": msg["id"], "e": ctl.error_body(exc.code, exc.msg)}, []
                self.send(reply, out)
                for fd in out:
                    if fd != self.doorbell and fd not in self.channels.values():
                        os.close(fd)

    def send(self, msg, fds=()):
        with self.lock:
            data = ctl.encode(msg)
            try:
                n = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
                self.sock.sendall(data[n:])
            except OSError:
                pass   # the client went away

    def handle(self):
        self.next += 1
        return self.next - 1

    def ring(self, kind, entry_size, n, max_sge=0, max_inline=0):
        size = native.ring_bytes(entry_size, n)
        fd = os.memfd_create("fake-ring", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
        native.ring_init(mm, kind, entry_size, n, max_sge, max_inline)
        return fd, size, (mm, native.RingView(mm))

    def methods(self):
        return [m for m, _, _ in self.log]

    # ---- verbs -----------------------------------------------------------------------------
    def do_hello(self, a, fds):
        return {"version": 1, "device": a["device"] or "rnic0", "doorbell_fd": 0}, \
            [self.doorbell]

    def do_query_device(self, a, fds):
        return {"fw_ver": "0.1.0", "max_qp": 1024, "atomic_cap": 1, "phys_port_cnt": 1,
                "name": "rnic0"}, []

    def do_query_port(self, a, fds):
        if a["port"] != 1:
            raise RnicError(errno.EINVAL, f"query_port: port {a['port']} does not exist; "
                            "the device has port 1")
        return {"state": 4, "active_mtu": 5, "gid_tbl_len": 16}, []

    def do_query_gid(self, a, fds):
        return {"gid": GID_RAW, "gid_type": 2}, []

    def do_alloc_pd(self, a, fds):
        return {"pd": self.handle()}, []

    def do_reg_mr(self, a, fds):
        h = self.handle()
        self.mrs[h] = mmap.mmap(fds[0], a["length"])
        os.close(fds[0])
        return {"mr": h, "lkey": 0x1000 + h, "rkey": 0x2000 + h}, []

    def do_create_comp_channel(self, a, fds):
        h = self.handle()
        self.channels[h] = os.eventfd(0, os.EFD_CLOEXEC)   # a blocking one, on purpose
        return {"channel": h}, [self.channels[h]]

    def do_create_cq(self, a, fds):
        h, n = self.handle(), _pow2(a["cqe"])
        fd, size, self.rings[("cq", h)] = self.ring(native.lib.RNIC_RING_CQ, 64, n)
        return {"cq": h, "cqe": n, "size": size}, [fd]

    def do_resize_cq(self, a, fds):
        n = _pow2(a["cqe"])
        fd, size, self.rings[("cq", a["cq"])] = self.ring(native.lib.RNIC_RING_CQ, 64, n)
        return {"cqe": n, "size": size}, [fd]

    def do_create_qp(self, a, fds):
        h, cap = self.handle(), dict(a["cap"])
        cap["max_send_wr"] = n_sq = _pow2(cap["max_send_wr"])
        es = (64 + max(16 * cap["max_send_sge"], cap["max_inline_data"]) + 15) // 16 * 16
        sfd, ssize, self.rings[("sq", h)] = self.ring(
            native.lib.RNIC_RING_SQ, es, n_sq, cap["max_send_sge"], cap["max_inline_data"])
        out, rsize = [sfd], 0
        if a["srq"] is None:
            cap["max_recv_wr"] = n_rq = _pow2(cap["max_recv_wr"])
            rfd, rsize, self.rings[("rq", h)] = self.ring(
                native.lib.RNIC_RING_RQ, 16 + 16 * cap["max_recv_sge"], n_rq,
                cap["max_recv_sge"])
            out.append(rfd)
        return {"qp": h, "qp_num": 0x100 + h, "cap": cap, "sq_size": ssize,
                "rq_size": rsize}, out

    def do_create_srq(self, a, fds):
        h, n = self.handle(), _pow2(a["max_wr"])
        fd, size, self.rings[("srq", h)] = self.ring(
            native.lib.RNIC_RING_SRQ, 16 + 16 * a["max_sge"], n, a["max_sge"])
        return {"srq": h, "max_wr": n, "max_sge": a["max_sge"], "size": size}, [fd]

    def do_modify_qp(self, a, fds):
        if a["attr"].get("qp_state") == e.IBV_QPS_SQD:
            return {"qp_state": int(e.IBV_QPS_ERR)}, []   # as if it fell into ERR meanwhile
        return {"qp_state": a["attr"].get("qp_state", 0)}, []

    def do_create_ah(self, a, fds):
        return {"ah": self.handle()}, []

    def do_get_counters(self, a, fds):
        return {"counters": {"sent_pkts": 3} if "qp" in a else {"rcvd_pkts": 9}}, []

    def do_set_fault(self, a, fds):
        return {"spec": a["spec"]}, []

    def __getattr__(self, name):
        if name.startswith("do_"):   # destroy_*, dereg_mr, dealloc_pd, ...
            return lambda a, fds: ({}, [])
        raise AttributeError(name)

    # ---- the data plane's side -------------------------------------------------------------
    def doorbells(self):
        try:
            return struct.unpack("=Q", os.read(self.doorbell, 8))[0]
        except BlockingIOError:
            return 0

    def complete(self, cq, n=1, **fields):
        """Write n CQEs into the CQ ring, as the data plane does; signal if armed."""
        mm, rv = self.rings[("cq", cq.handle)]
        prod = rv.load_prod()
        for i in range(n):
            c = rv.cqe(prod + i)
            c.wr_id = fields.get("wr_id", 100) + i
            c.status, c.opcode = fields.get("status", 0), fields.get("opcode", 128)
            c.byte_len, c.qp_num = fields.get("byte_len", 4), fields.get("qp_num", 0x101)
            c.imm_data, c.wc_flags = fields.get("imm_data", 0), fields.get("wc_flags", 0)
        rv.store_prod(prod + n)
        arm = native.ffi.addressof(rv.hdr, "arm")
        if native.lib.rnic_xchg(arm, 0) and cq.channel is not None:
            native.lib.rnic_fetch_add(native.ffi.addressof(rv.hdr, "events"), 1)
            os.write(self.channels[cq.channel.handle], struct.pack("=Q", 1))


@pytest.fixture
def daemon():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    d = FakeRnicd(b)
    d.start()
    d.client_sock = a
    yield d
    a.close()
    b.close()
    d.join(2)


@pytest.fixture
def ctx(daemon):
    with Context(_sock=daemon.client_sock) as c:
        yield c


# ---- control connection -----------------------------------------------------------------------
def test_hello_and_doorbell(daemon, ctx):
    m, a, _ = daemon.log[0]
    assert m == "hello" and a["version"] == ctl.PROTOCOL_VERSION and a["pid"] == os.getpid()
    assert a["device"] is None and ctx.name == "rnic0"
    ctx._ring_doorbell()
    assert daemon.doorbells() == 1


def test_queries(ctx):
    attr = ctx.query_device()
    assert attr.max_qp == 1024 and attr.fw_version == attr.fw_ver == "0.1.0"
    assert attr.atomic_caps == 1
    assert ctx.query_port(1).active_mtu == 5
    gid = ctx.query_gid(1, 0)
    assert gid.gid == "0000:0000:0000:0000:0000:ffff:7f00:0001" and gid.raw == GID_RAW
    assert gid.gid_type == 2


def test_error_reply_raises_rnic_error(ctx):
    with pytest.raises(RnicError) as ei:
        ctx.query_port(2)
    assert ei.value.code == errno.EINVAL and ei.value.name == "EINVAL"
    assert "port 2" in ei.value.msg
    assert ctx.query_port(1).state == 4        # the connection is still usable


def test_unencodable_request_keeps_the_connection(ctx):
    with pytest.raises(RnicError) as ei:
        ctx._call("query_port", {"port": object()})
    assert ei.value.code == errno.EINVAL and "encode" in ei.value.msg
    assert ctx.query_port(1).state == 4


def test_fd_passing_both_ways(daemon, ctx):
    with PD(ctx) as pd, MR(pd, 100, e.IBV_ACCESS_LOCAL_WRITE) as mr:
        m, a, fds = daemon.log[-1]
        assert m == "reg_mr" and len(fds) == 1
        assert a["addr"] == mr.buf and a["length"] == 100 and a["start"] == 0
        assert a["segments"] == [[0, 0, 4096]]
        daemon.mrs[mr.handle][0:5] = b"hello"          # the daemon's own mapping
        assert mr.read(5, 0) == b"hello"
        mr.write(b"world", 5, 95)
        assert daemon.mrs[mr.handle][95:100] == b"world"
        assert (mr.lkey, mr.rkey) == (0x1000 + mr.handle, 0x2000 + mr.handle)
        with pytest.raises(RnicError) as ei:
            mr.read(10, 95)
        assert ei.value.code == errno.EINVAL
        with pytest.raises(RnicError):
            mr.write(b"x" * 4, 4, 98)
    assert mr.closed and mr.mmap is None


def test_events_before_a_reply_are_queued(daemon, ctx):
    daemon.before_reply["alloc_pd"] = [{"type": 15, "srq": 77}, {"type": 9, "port_num": 1}]
    PD(ctx)
    ev = ctx.get_async_event(timeout=1)
    assert ev.event_type == e.EventType.IBV_EVENT_SRQ_LIMIT_REACHED and ev.srq == 77
    ev2 = ctx.get_async_event(timeout=1)
    assert ev2.event_type == e.IBV_EVENT_PORT_ACTIVE and ev2.port_num == 1
    assert ctx.get_async_event(timeout=0.05) is None


def test_event_while_idle(daemon, ctx):
    threading.Timer(0.05, daemon.send, ({"ev": {"type": 1, "qp_num": 5}},)).start()
    ev = ctx.get_async_event(timeout=2)
    assert ev.event_type == e.IBV_EVENT_QP_FATAL and ev.qp_num == 5


async def test_async_event(daemon, ctx):
    asyncio.get_running_loop().call_later(0.05, daemon.send, {"ev": {"type": 8}})
    ev = await asyncio.wait_for(ctx.async_event(), 2)
    assert ev.event_type == e.IBV_EVENT_DEVICE_FATAL


def test_context_finds_the_daemon_through_rnic_socket(tmp_path, monkeypatch):
    path = tmp_path / "rnicd.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    served = []

    def serve():
        conn, _ = srv.accept()
        served.append(FakeRnicd(conn))
        served[0].run()
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    monkeypatch.setenv("RNIC_SOCKET", str(path))
    with Context(name="rnic7") as ctx:
        assert ctx.name == "rnic7"
    t.join(2)
    srv.close()
    assert served[0].log[0][1]["device"] == "rnic7"


def test_daemon_gone(daemon):
    ctx = Context(_sock=daemon.client_sock)
    daemon.sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(RnicError) as ei:
        ctx.query_device()
    assert ei.value.code in (errno.ECONNRESET, errno.EPIPE)
    ctx.close()
    ctx.close()


def test_extensions(daemon, ctx):
    assert ctx.get_counters() == {"rcvd_pkts": 9}
    assert ctx.set_fault(drop=0.1, seed=3) == {"drop": 0.1, "seed": 3}


def test_close_order_and_idempotence(daemon, ctx):
    pd = PD(ctx)
    mr = MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
    pd.close()
    assert mr.closed and pd.closed
    assert daemon.methods()[-2:] == ["dereg_mr", "dealloc_pd"]
    pd.close()
    assert daemon.methods()[-1] == "dealloc_pd"
    with pytest.raises(RnicError) as ei:
        MR(pd, 10)
    assert ei.value.code == errno.EBADF


def test_finalizer_defers_destroy(daemon, ctx):
    pd = PD(ctx)
    h = pd.handle
    del pd
    gc.collect()
    ctx.query_device()
    assert ("dealloc_pd", {"pd": h}) in [(m, a) for m, a, _ in daemon.log]
    assert daemon.methods()[-1] == "query_device"


def test_context_close_skips_destroys(daemon):
    with Context(_sock=daemon.client_sock) as ctx:
        pd = PD(ctx)
        mr = MR(pd, 10)
    assert pd.closed and mr.closed and ctx.closed
    assert "dereg_mr" not in daemon.methods()


# ---- rings ------------------------------------------------------------------------------------
@pytest.fixture
def rc(ctx):
    """An RC QP in RTS with two CQs, an MR of 4096 bytes."""
    if native is None:
        pytest.skip(_NATIVE_WHY)
    pd = PD(ctx)
    mr = MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE)
    scq, rcq = CQ(ctx, 16), CQ(ctx, 16)
    cap = QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=2, max_recv_sge=2,
                max_inline_data=64)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=scq, rcq=rcq, cap=cap))
    return pd, mr, scq, rcq, qp


def _to_rts(qp):
    attr = QPAttr(dest_qp_num=9, qp_access_flags=e.IBV_ACCESS_REMOTE_WRITE)
    attr.ah_attr = AHAttr(gr=GlobalRoute(dgid=GID_RAW))
    qp.to_rts(attr)


@needs_native
def test_transitions_use_pyverbs_masks(daemon, rc):
    *_, qp = rc
    _to_rts(qp)
    mods = [a for m, a, _ in daemon.log if m == "modify_qp"]
    assert [m["attr"]["qp_state"] for m in mods] == [1, 2, 3]
    assert mods[0]["attr_mask"] == e.IBV_QP_STATE | e.IBV_QP_PKEY_INDEX | e.IBV_QP_PORT | \
        e.IBV_QP_ACCESS_FLAGS
    assert set(mods[1]["attr"]) == {"qp_state", "ah_attr", "path_mtu", "dest_qp_num", "rq_psn",
                                    "max_dest_rd_atomic", "min_rnr_timer"}
    assert mods[1]["attr"]["ah_attr"]["grh"]["dgid"] == GID_RAW
    assert set(mods[2]["attr"]) == {"qp_state", "timeout", "retry_cnt", "rnr_retry", "sq_psn",
                                    "max_rd_atomic"}
    assert qp.qp_state == e.IBV_QPS_RTS
    qp.modify(QPAttr(qp_state=e.IBV_QPS_SQD), e.IBV_QP_STATE)
    assert qp.qp_state == e.IBV_QPS_ERR              # the state rnicd reported wins


@needs_native
def test_post_send_writes_wqes_and_rings_once(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    _to_rts(qp)
    daemon.doorbells()
    w1 = SendWR(wr_id=1, sg=[SGE(mr.buf, 8, mr.lkey), SGE(mr.buf + 100, 16, mr.lkey)])
    w2 = SendWR(wr_id=2, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, imm_data=0xDEADBEEF,
                sg=[SGE(mr.buf, 1, mr.lkey)])
    w2.set_wr_rdma(rkey=0x55, addr=0x7000)
    w1.next_wr = w2
    qp.post_send([w1, SendWR(wr_id=3, sg=[SGE(mr.buf, 0, mr.lkey)], send_flags=0)])
    assert daemon.doorbells() == 1
    _, rv = daemon.rings[("sq", qp.handle)]
    assert rv.load_prod() == 3
    a, b, c = rv.send_wqe(0), rv.send_wqe(1), rv.send_wqe(2)
    assert (a.wr_id, a.opcode, a.num_sge, a.send_flags) == (1, e.IBV_WR_SEND, 2, 2)
    assert (a.sg[1].addr, a.sg[1].length, a.sg[1].lkey) == (mr.buf + 100, 16, mr.lkey)
    assert (b.opcode, b.imm_data, b.rkey, b.remote_addr) == (1, 0xDEADBEEF, 0x55, 0x7000)
    assert (c.wr_id, c.send_flags) == (3, 0)


@needs_native
def test_doorbell_skipped_while_daemon_polls(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    _to_rts(qp)
    daemon.doorbells()
    _, rv = daemon.rings[("sq", qp.handle)]
    rv.hdr.polling = 1
    qp.post_send(SendWR(sg=[SGE(mr.buf, 8, mr.lkey)]))
    assert daemon.doorbells() == 0 and rv.load_prod() == 1


@needs_native
def test_inline_data_follows_the_header(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    _to_rts(qp)
    mr.write(b"0123456789", 10)
    qp.post_send(SendWR(sg=[SGE(mr.buf, 4, 0), SGE(mr.buf + 6, 4, mr.lkey)],
                        send_flags=e.IBV_SEND_INLINE | e.IBV_SEND_SIGNALED))
    _, rv = daemon.rings[("sq", qp.handle)]
    w = rv.send_wqe(0)
    assert w.inline_len == 8 and w.num_sge == 0
    assert bytes(native.ffi.buffer(native.ffi.cast("uint8_t *", w) + 64, 8)) == b"01236789"


def _post_err(qp, wr, code=errno.EINVAL):
    with pytest.raises(RnicError) as ei:
        qp.post_send(wr)
    assert ei.value.code == code
    return ei.value


@needs_native
def test_post_send_validation(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    sge = SGE(mr.buf, 8, mr.lkey)
    assert "RESET" in _post_err(qp, SendWR(sg=[sge])).msg
    _to_rts(qp)
    err = _post_err(qp, SendWR(sg=[sge, sge, sge]))
    assert "3 SGEs" in err.msg and "max_send_sge" in err.msg
    assert "lkey" in _post_err(qp, SendWR(sg=[SGE(mr.buf, 8, 0xBAD)])).msg
    err = _post_err(qp, SendWR(sg=[sge, SGE(mr.buf + 4090, 8, mr.lkey)]))
    assert "sg[1]" in err.msg and "outside" in err.msg
    assert "max_inline_data" in _post_err(qp, SendWR(
        sg=[SGE(mr.buf, 65, mr.lkey)], send_flags=e.IBV_SEND_INLINE)).msg
    _post_err(qp, SendWR(opcode=e.IBV_WR_RDMA_READ, sg=[sge], send_flags=e.IBV_SEND_INLINE))
    assert "carries no data" in _post_err(qp, SendWR(opcode=e.IBV_WR_BIND_MW, sg=[sge])).msg
    assert "set_bind_wr" in _post_err(qp, SendWR(opcode=e.IBV_WR_BIND_MW)).msg
    _post_err(qp, SendWR(sg=[sge], send_flags=0x100))
    _post_err(qp, SendWR(opcode=e.IBV_WR_SEND_WITH_IMM, imm_data=1 << 32, sg=[sge]))
    atomic = SendWR(opcode=e.IBV_WR_ATOMIC_FETCH_AND_ADD, sg=[SGE(mr.buf, 4, mr.lkey)])
    atomic.set_wr_atomic(1, 0x1000, 1)
    assert "8 bytes" in _post_err(qp, atomic).msg
    _, rv = daemon.rings[("sq", qp.handle)]
    assert rv.load_prod() == 0                      # nothing was written


@needs_native
def test_a_wr_posted_again_is_checked_again_after_any_change(daemon, rc):
    """A WR posted again unchanged is not checked again (rnic._post remembers the check);
    every change that could make the check fail must make the next post check again."""
    pd, mr, scq, rcq, qp = rc
    _to_rts(qp)
    _, rv = daemon.rings[("sq", qp.handle)]

    def post_ok(wr):
        qp.post_send(wr)
        rv.store_cons(rv.load_prod())               # the daemon took it

    sge = SGE(mr.buf, 8, mr.lkey)
    wr = SendWR(sg=[sge])
    post_ok(wr)
    post_ok(wr)
    sge.lkey = 0xBAD                                # an SGE changed
    assert "lkey" in _post_err(qp, wr).msg
    sge.lkey = mr.lkey
    post_ok(wr)
    wr.sg.extend([SGE(mr.buf, 8, mr.lkey)] * 2)     # the SG list changed in place
    assert "3 SGEs" in _post_err(qp, wr).msg
    del wr.sg[1:]
    post_ok(wr)
    wr.send_flags = 0x100                           # a field changed
    _post_err(qp, wr)
    wr.send_flags = e.IBV_SEND_SIGNALED
    post_ok(wr)
    other = MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
    wr2 = SendWR(sg=[SGE(other.buf, 8, other.lkey)])
    post_ok(wr2)
    other.close()                                   # its MR was deregistered
    assert "lkey" in _post_err(qp, wr2).msg
    iwr = SendWR(sg=[SGE(mr.buf, 4, mr.lkey)], send_flags=e.IBV_SEND_INLINE)
    for data in (b"abcd", b"wxyz"):                 # inline data is read at every post
        mr.write(data, 4)
        k = rv.load_prod()
        post_ok(iwr)
        w = rv.send_wqe(k)
        assert bytes(native.ffi.buffer(native.ffi.cast("uint8_t *", w) + 64, 4)) == data
    qp2 = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=scq, rcq=rcq,
                            cap=QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=1)))
    _to_rts(qp2)
    wr3 = SendWR(sg=[sge, SGE(mr.buf, 8, mr.lkey)])
    post_ok(wr3)
    assert "max_send_sge" in _post_err(qp2, wr3).msg   # another QP: checked against it
    # receives: the same rules
    rq = daemon.rings[("rq", qp.handle)][1]
    rwr = RecvWR(sg=[SGE(mr.buf, 8, mr.lkey)])
    qp.post_recv(rwr)
    rq.store_cons(rq.load_prod())
    rwr.sg[0].length = 4097
    with pytest.raises(RnicError) as ei:
        qp.post_recv(rwr)
    assert "outside" in ei.value.msg


@needs_native
def test_post_send_chain_stops_at_the_bad_wr(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    _to_rts(qp)
    good = SendWR(wr_id=1, sg=[SGE(mr.buf, 8, mr.lkey)])
    good.next_wr = SendWR(wr_id=2, sg=[SGE(mr.buf, 8, 0xBAD)])
    bad = SendWR()
    err = _post_err(qp, good)
    assert err.bad_wr is good.next_wr
    with pytest.raises(RnicError):
        qp.post_send(good, bad)
    assert bad.wr_id == 2
    _, rv = daemon.rings[("sq", qp.handle)]
    assert rv.load_prod() == 2 and rv.send_wqe(1).wr_id == 1


@needs_native
def test_send_queue_full(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    _to_rts(qp)
    wr = SendWR(sg=[SGE(mr.buf, 8, mr.lkey)])
    qp.post_send([wr] * 4)
    err = _post_err(qp, wr, errno.ENOMEM)
    assert "max_send_wr=4" in err.msg
    _, rv = daemon.rings[("sq", qp.handle)]
    rv.store_cons(1)                                  # the daemon retired one
    qp.post_send(wr)
    assert rv.load_prod() == 5


@needs_native
def test_opcode_must_fit_the_qp_type(daemon, ctx):
    pd, cq = PD(ctx), CQ(ctx, 4)
    mr = MR(pd, 64)
    uc = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_UC, scq=cq, rcq=cq))
    uc._state = e.QPState.IBV_QPS_RTS
    err = _post_err(uc, SendWR(opcode=e.IBV_WR_RDMA_READ, sg=[SGE(mr.buf, 8, mr.lkey)]))
    assert "IBV_QPT_UC" in err.msg
    ud = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_UD, scq=cq, rcq=cq), QPAttr(qkey=0x11))
    assert ud.qp_state == e.IBV_QPS_RTS
    assert "address handle" in _post_err(ud, SendWR(sg=[SGE(mr.buf, 8, mr.lkey)])).msg
    ah = AH(pd, AHAttr(gr=GlobalRoute(dgid=GID_RAW)))
    wr = SendWR(sg=[SGE(mr.buf, 8, mr.lkey)])
    wr.set_wr_ud(ah, 0x123, 0x11)
    ud.post_send(wr)
    w = daemon.rings[("sq", ud.handle)][1].send_wqe(0)
    assert (w.ah, w.remote_qpn, w.remote_qkey) == (ah.handle, 0x123, 0x11)


@needs_native
def test_post_recv_and_srq(daemon, rc, ctx):
    pd, mr, scq, rcq, qp = rc
    wr = RecvWR(wr_id=5, sg=[SGE(mr.buf + 8, 32, mr.lkey)])
    with pytest.raises(RnicError) as ei:
        qp.post_recv(wr)
    assert "RESET" in ei.value.msg
    qp.to_init(QPAttr())
    qp.post_recv(wr)
    _, rv = daemon.rings[("rq", qp.handle)]
    w = rv.recv_wqe(0)
    assert (rv.load_prod(), w.wr_id, w.num_sge, w.sg[0].addr, w.sg[0].length) == \
        (1, 5, 1, mr.buf + 8, 32)
    qp.post_recv([wr] * 3)
    with pytest.raises(RnicError) as ei:
        qp.post_recv(wr)
    assert ei.value.code == errno.ENOMEM
    srq = SRQ(pd, SrqInitAttr(SrqAttr(max_wr=2, max_sge=1)))
    sqp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=scq, rcq=rcq, srq=srq))
    with pytest.raises(RnicError) as ei:
        sqp.post_recv(wr)
    assert "SRQ" in ei.value.msg
    srq.post_recv(RecvWR(wr_id=9, sg=[SGE(mr.buf, 8, mr.lkey)]))
    assert daemon.rings[("srq", srq.handle)][1].recv_wqe(0).wr_id == 9
    with pytest.raises(RnicError):
        srq.post_recv(RecvWR(sg=[SGE(mr.buf, 8, mr.lkey)] * 2))
    daemon.send({"ev": {"type": e.IBV_EVENT_QP_LAST_WQE_REACHED, "qp": sqp.handle}})
    ev = ctx.get_async_event(timeout=1)
    assert ev.qp is sqp and ev.qp_num == sqp.qp_num
    daemon.send({"ev": {"type": e.IBV_EVENT_QP_FATAL, "qp_num": qp.qp_num}})
    ev = ctx.get_async_event(timeout=1)
    assert ev.qp is qp and ev.qp_num == qp.qp_num
    srq.close()
    assert sqp.closed and not qp.closed


@needs_native
def test_poll_reads_cqes(daemon, rc):
    pd, mr, scq, rcq, qp = rc
    assert scq.poll() == (0, [])
    daemon.complete(scq, 3, imm_data=0xABCD, wc_flags=e.IBV_WC_WITH_IMM, byte_len=77)
    n, wcs = scq.poll(2)
    assert n == 2 and [w.wr_id for w in wcs] == [100, 101]
    assert (wcs[0].imm_data, wcs[0].byte_len, wcs[0].opcode) == (0xABCD, 77, e.IBV_WC_RECV)
    _, rv = daemon.rings[("cq", scq.handle)]
    assert rv.load_cons() == 2
    assert scq.poll(5)[0] == 1 and scq.poll()[0] == 0


@needs_native
def test_req_notify_and_comp_channel(daemon, ctx):
    ch = CompChannel(ctx)
    cq1, cq2 = CQ(ctx, 4, channel=ch), CQ(ctx, 4, channel=ch)
    _, rv1 = daemon.rings[("cq", cq1.handle)]
    cq1.req_notify(solicited_only=True)
    assert rv1.hdr.arm == e.RNIC_CQ_ARM_SOLICITED
    cq1.req_notify()
    assert rv1.hdr.arm == e.RNIC_CQ_ARM_NEXT
    cq1.req_notify(solicited_only=True)
    assert rv1.hdr.arm == e.RNIC_CQ_ARM_NEXT        # "next" already covers solicited
    assert ch.get_cq_event(timeout=0.05) is None
    daemon.complete(cq1)
    assert rv1.hdr.arm == 0
    assert ch.get_cq_event(cq1, timeout=1) is cq1
    ch.ack_cq_events(cq1, 1)
    cq2.req_notify()
    daemon.complete(cq2)
    with pytest.raises(RnicError):
        ch.get_cq_event(cq1, timeout=1)             # pyverbs: an unexpected CQ is an error
    ch.close()
    assert cq1.closed and cq2.closed


@needs_native
async def test_wait_with_channel(daemon, ctx):
    ch = CompChannel(ctx)
    cq = CQ(ctx, 4, channel=ch)
    assert await cq.wait(timeout=0.05) is False
    asyncio.get_running_loop().call_later(0.05, daemon.complete, cq)
    n, wcs = await cq.poll_async(timeout=2)
    assert n == 1 and wcs[0].wr_id == 100
    cq.req_notify()
    asyncio.get_running_loop().call_later(0.05, daemon.complete, cq)
    assert await asyncio.wait_for(ch.get_cq_event_async(), 2) is cq
    assert cq.poll()[0] == 1


@needs_native
async def test_wait_without_channel_backs_off(daemon, ctx):
    cq = CQ(ctx, 4)
    assert await cq.poll_async(timeout=0.02) == (0, [])
    asyncio.get_running_loop().call_later(0.03, daemon.complete, cq)
    t0 = time.monotonic()
    n, _ = await cq.poll_async(timeout=2)
    assert n == 1 and time.monotonic() - t0 < 1


@needs_native
def test_resize_remaps(daemon, ctx):
    cq = CQ(ctx, 4)
    cq.resize(64)
    assert cq.cqe == 64
    daemon.complete(cq, 40)
    assert cq.poll(64)[0] == 40


@needs_native
def test_rings_from_the_daemon_are_checked():
    from rnic._rings import Ring

    from rnicd.wire.rings import RingKind
    KIND_CQ, KIND_SQ = RingKind.CQ, RingKind.SQ

    def memfd(size, init=None):
        fd = os.memfd_create("t", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        if init:
            with mmap.mmap(fd, size) as mm:
                native.ring_init(mm, *init)
        return fd

    for fd, size, kind, what in (
            (memfd(4096), 4096, KIND_CQ, "magic"),                     # all zeros
            (memfd(4096), 8192, KIND_CQ, "exceeds its memfd"),         # would SIGBUS
            (memfd(4096, (KIND_CQ, 64, 4)), 4096, KIND_SQ, "kind"),
            (memfd(4096, (KIND_CQ, 64, 4)), 100, KIND_CQ, "size")):
        with pytest.raises(RnicError) as ei:
            Ring(fd, size, kind, "test")
        assert ei.value.code == errno.EPROTO and what in ei.value.msg
    ring = Ring(memfd(4096, (KIND_CQ, 64, 4)), 4096, KIND_CQ, "test")
    assert (ring.num_entries, ring.entry_size) == (4, 64)
    ring.release()
    ring.release()

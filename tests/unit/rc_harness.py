"""Sans-I/O harness: two Devices joined by an in-memory network, driven by the test.

Rings live in bytearrays and are written the way a client writes them (rnic_abi.h), so the
protocol core (requester/responder/completer) is exercised without sockets or processes.
`net` decides the fate of every datagram, which makes loss and reordering deterministic.
"""
from __future__ import annotations

import itertools

from rnicd import native
from rnicd.api.session import Session
from rnicd.core.device import Device
from rnicd.wire import abi, roce

ALL_ACCESS = abi.RC_ACCESS


class FakeShm:
    """Rings and regions in process memory; 'fds' are tokens."""

    def __init__(self):
        self.regions = {}
        self._tok = itertools.count(1000)
        self.sessions = []

    def new_eventfd(self, doorbell=False):
        return next(self._tok)

    def close_fd(self, fd):
        pass

    def new_ring(self, kind, esz, n, max_sge, max_inline):
        buf = bytearray(native.ring_bytes(esz, n))
        native.ring_init(buf, kind, esz, n, max_sge, max_inline)
        return native.RingView(buf), next(self._tok), len(buf)

    def release_ring(self, ring):
        ring.release()

    def map_region(self, fds, segments):
        return self.regions[fds[0]]

    def unmap(self, mm):
        pass

    def file_identity(self, fd):
        return ("fake-file", fd)


class Host:
    def __init__(self, ip, seed=1, shm=None):
        self.dev = Device("rnic0", ip, seed=seed)
        self.shm = shm or FakeShm()
        self.s = Session(self.dev, self.shm)
        self.now = 0.0
        self.pd = self.call("alloc_pd")["pd"]
        self.rings = {}

    def call(self, method, fds=(), **args):
        res, out = self.s.call(method, args, list(fds), self.now)
        return res

    def mr(self, size, access=ALL_ACCESS, iova=0x10000, buf=None):
        """buf: the region's memory (default a bytearray; an anonymous mmap for large ones:
        its pages cost nothing until written)."""
        buf = bytearray(size) if buf is None else buf
        tok = next(self.shm._tok)
        self.shm.regions[tok] = buf
        r = self.call("reg_mr", [tok], pd=self.pd, addr=iova, length=size, access=access)
        return MR(r["lkey"], r["rkey"], buf, iova)

    def cq(self, n=256):
        r = self.call("create_cq", cqe=n, channel=None)
        return self.s.cqs[r["cq"]]

    def qp(self, cq, max_send_wr=64, max_recv_wr=64, srq=None, sge=4, inline=64,
           qp_type=abi.IBV_QPT_RC):
        r = self.call("create_qp", pd=self.pd, qp_type=qp_type, send_cq=cq.handle,
                      recv_cq=cq.handle, srq=srq, sq_sig_all=0,
                      cap=dict(max_send_wr=max_send_wr, max_recv_wr=max_recv_wr,
                               max_send_sge=sge, max_recv_sge=sge, max_inline_data=inline))
        return self.s.qps[r["qp"]]

    def post_send(self, qp, wr_id, opcode, sges=(), *, flags=abi.IBV_SEND_SIGNALED, imm=0,
                  rkey=0, raddr=0, compare_add=0, swap=0, inline=None, ring=True, ah=0,
                  remote_qpn=0, remote_qkey=0, remote_srqn=None):
        ring_v = qp.sq_ring
        prod = ring_v.load_prod()
        w = ring_v.send_wqe(prod)
        w.wr_id, w.opcode, w.send_flags, w.imm_data = wr_id, opcode, flags, imm
        w.rkey, w.remote_addr, w.compare_add, w.swap = rkey, raddr, compare_add, swap
        w.ah, w.remote_qpn, w.remote_qkey = ah, remote_qpn, remote_qkey
        if remote_srqn is not None:         # XRC: shares remote_qpn's place (rnic_abi.h)
            w.remote_srqn = remote_srqn
        if inline is not None:
            w.send_flags |= abi.IBV_SEND_INLINE
            w.inline_len = len(inline)
            native.ffi.memmove(w.sg, inline, len(inline))
            w.num_sge = 0
        else:
            w.num_sge = len(sges)
            for i, (a, n, k) in enumerate(sges):
                w.sg[i].addr, w.sg[i].length, w.sg[i].lkey = a, n, k
        ring_v.store_prod(prod + 1)
        if ring:
            self.dev.doorbell(self.s, self.now)

    def post_recv(self, qp_or_srq, wr_id, sges):
        qp_or_srq.rq.post(wr_id, list(sges))

    def poll(self, cq):
        out = []
        ring_v = cq.ring
        while ring_v.load_cons() != ring_v.load_prod():
            c = ring_v.cqe(ring_v.load_cons())
            out.append(dict(wr_id=c.wr_id, status=abi.WCStatus(c.status), opcode=c.opcode,
                            byte_len=c.byte_len, imm_data=c.imm_data, qp_num=c.qp_num,
                            src_qp=c.src_qp, wc_flags=c.wc_flags))
            ring_v.store_cons(ring_v.load_cons() + 1)
        return out


class MR:
    def __init__(self, lkey, rkey, buf, iova):
        self.lkey, self.rkey, self.buf, self.iova = lkey, rkey, buf, iova

    def sge(self, off=0, n=None):
        return (self.iova + off, len(self.buf) - off if n is None else n, self.lkey)


def connect(a: Host, qa, b: Host, qb, mtu=abi.IBV_MTU_1024, timeout=14, retry_cnt=7,
            rnr_retry=7, min_rnr_timer=1, psn_a=100, psn_b=200, access=ALL_ACCESS):
    for h, q, peer, qpeer, my_psn, peer_psn in ((a, qa, b, qb, psn_a, psn_b),
                                                (b, qb, a, qa, psn_b, psn_a)):
        M = abi.QPAttrMask
        q.modify(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
                 dict(qp_state=abi.IBV_QPS_INIT, pkey_index=0, port_num=1,
                      qp_access_flags=access), h.now)
        ah = dict(port_num=1, is_global=1, grh=dict(dgid=peer.dev.gid, sgid_index=0,
                                                    hop_limit=64, flow_label=0,
                                                    traffic_class=0))
        q.modify(M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN
                 | M.IBV_QP_RQ_PSN | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER,
                 dict(qp_state=abi.IBV_QPS_RTR, ah_attr=ah, path_mtu=mtu,
                      dest_qp_num=qpeer.qp_num, rq_psn=peer_psn, max_dest_rd_atomic=4,
                      min_rnr_timer=min_rnr_timer), h.now)
        q.modify(M.IBV_QP_STATE | M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY
                 | M.IBV_QP_SQ_PSN | M.IBV_QP_MAX_QP_RD_ATOMIC,
                 dict(qp_state=abi.IBV_QPS_RTS, timeout=timeout, retry_cnt=retry_cnt,
                      rnr_retry=rnr_retry, sq_psn=my_psn, max_rd_atomic=4), h.now)


def connect_uc(a: Host, qa, b: Host, qb, mtu=abi.IBV_MTU_1024, psn_a=100, psn_b=200,
               access=abi.IBV_ACCESS_LOCAL_WRITE | abi.IBV_ACCESS_REMOTE_WRITE):
    """As connect() for UC QPs, with the masks the kernel's table has for UC (no RC-only
    attribute: no timeout, retries, RNR timer or RDMA READ/atomic depths)."""
    M = abi.QPAttrMask
    for h, q, peer, qpeer, my_psn, peer_psn in ((a, qa, b, qb, psn_a, psn_b),
                                                (b, qb, a, qa, psn_b, psn_a)):
        q.modify(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
                 dict(qp_state=abi.IBV_QPS_INIT, pkey_index=0, port_num=1,
                      qp_access_flags=access), h.now)
        ah = dict(port_num=1, is_global=1, grh=dict(dgid=peer.dev.gid, sgid_index=0,
                                                    hop_limit=64, flow_label=0,
                                                    traffic_class=0))
        q.modify(M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN
                 | M.IBV_QP_RQ_PSN,
                 dict(qp_state=abi.IBV_QPS_RTR, ah_attr=ah, path_mtu=mtu,
                      dest_qp_num=qpeer.qp_num, rq_psn=peer_psn), h.now)
        q.modify(M.IBV_QP_STATE | M.IBV_QP_SQ_PSN,
                 dict(qp_state=abi.IBV_QPS_RTS, sq_psn=my_psn), h.now)


def connect_to(h: Host, q, peer_ip: str, peer_qpn: int, mtu=abi.IBV_MTU_1024, my_psn=100,
               peer_psn=200, access=ALL_ACCESS):
    """Take q to RTS towards a peer that is not a Host (a test peer sending raw packets)."""
    M = abi.QPAttrMask
    q.modify(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
             dict(qp_state=abi.IBV_QPS_INIT, pkey_index=0, port_num=1,
                  qp_access_flags=access), h.now)
    ah = dict(port_num=1, is_global=1, grh=dict(dgid=roce.ipv4_mapped_gid(peer_ip),
                                                sgid_index=0, hop_limit=64, flow_label=0,
                                                traffic_class=0))
    q.modify(M.IBV_QP_STATE | M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN
             | M.IBV_QP_RQ_PSN | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER,
             dict(qp_state=abi.IBV_QPS_RTR, ah_attr=ah, path_mtu=mtu, dest_qp_num=peer_qpn,
                  rq_psn=peer_psn, max_dest_rd_atomic=4, min_rnr_timer=1), h.now)
    q.modify(M.IBV_QP_STATE | M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY
             | M.IBV_QP_SQ_PSN | M.IBV_QP_MAX_QP_RD_ATOMIC,
             dict(qp_state=abi.IBV_QPS_RTS, timeout=14, retry_cnt=7, rnr_retry=7,
                  sq_psn=my_psn, max_rd_atomic=4), h.now)


def run(a: Host, b: Host, net=None, max_time=60.0, max_rounds=1_000_000, until=None,
        tick=0.0):
    """Deliver datagrams until both sides are idle; jump the clock to the next deadline when
    nothing is in flight. `net(src, data) -> list of datagrams` may drop/dup/reorder.
    `until`: also return (without error) when the next deadline lies beyond that time.
    `tick`: each delivery round takes this long (round trips then measure above zero)."""
    hosts = {a.dev.ip: a, b.dev.ip: b}
    held = []
    for _ in range(max_rounds):
        moved = False
        for src in (a, b):
            for data, (ip, _port) in src.dev.take_tx():
                for d in (net(src, data) if net else [data]):
                    held.append((hosts[ip], src, d))
            src.dev.produce(src.now)        # the transmit buffer drained: READ responses
        if held:
            batch, held = held, []
            for dst, src, d in batch:
                dst.dev.receive(d, src.dev.ip, 4791, dst.now)
                moved = True
            a.dev.end_batch(a.now)
            b.dev.end_batch(b.now)
            a.now = b.now = a.now + tick
        if (moved or a.dev.tx or b.dev.tx or a.dev.dp.ntx or b.dev.dp.ntx or a.dev.reading
                or b.dev.reading):
            continue
        deadlines = [d for d in (a.dev.next_deadline(), b.dev.next_deadline()) if d is not None]
        if not deadlines:
            return
        t = min(deadlines)
        if until is not None and t > until:
            return
        if t > max_time:
            raise AssertionError(f"still busy at t={t}")
        a.now = b.now = max(t, a.now)
        a.dev.on_timer(a.now)
        b.dev.on_timer(b.now)
    raise AssertionError("no quiescence")


def run_batched(a: Host, b: Host, max_rounds=10_000_000):
    """As run() on a lossless network, for transfers of millions of packets: datagrams go
    from one device's transmit buffer into the other's data plane 64 at a time
    (rnic_dp_rx_batch, as the daemon's receive loop does), without a Python object each."""
    lib, ffi = native.lib, native.ffi
    batch = lib.RNIC_MAX_BATCH
    slow = ffi.new("uint32_t[]", batch)
    ports = ffi.new("uint16_t[]", [4791] * batch)
    srcs = {h: ffi.new("uint32_t[]", [native.ipv4_be(h.dev.ip)] * batch) for h in (a, b)}
    for _ in range(max_rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            dp, ddev = src.dev.dp, dst.dev
            for data, _addr in src.dev.tx:           # spilled: one by one, in order
                ddev.receive(data, src.dev.ip, 4791, dst.now)
                moved = True
            src.dev.tx = []
            for off in range(0, dp.ntx, batch):
                k = min(batch, dp.ntx - off)
                ddev.dp.now = dst.now
                for j in range(lib.rnic_dp_rx_batch(ddev.dp, dp.tx_bufs + off * dp.tx_buf_size,
                                                    dp.tx_buf_size, dp.tx_lens + off,
                                                    srcs[src], ports, k, slow)):
                    i = off + slow[j]
                    data = ffi.buffer(dp.tx_bufs + i * dp.tx_buf_size, dp.tx_lens[i])[:]
                    ddev.receive_slow(data, src.dev.ip, 4791, dst.now)
                ddev.end_batch(dst.now)
                moved = True
            dp.ntx = 0
            src.dev.produce(src.now)
        if not (moved or a.dev.reading or b.dev.reading):
            return
    raise AssertionError("no quiescence")


def send_with_inv_datagrams(rkey=0xA5A5A5A5, sizes=(13, 600)):
    """The datagrams the data plane builds for SEND with Invalidate WQEs of these sizes
    (path MTU 256: ONLY, or FIRST, MIDDLE..., LAST WITH INVALIDATE), on a QP of 127.0.0.1
    towards 127.0.0.2 QPN 0x99 (both ports 4791): [(datagram, payload)]."""
    a = Host("127.0.0.1")
    qa = a.qp(a.cq())
    connect_to(a, qa, "127.0.0.2", 0x99, mtu=abi.IBV_MTU_256)
    m = a.mr(4096)
    m.buf[:] = bytes(range(256)) * 16
    for i, n in enumerate(sizes):
        a.post_send(qa, i, abi.IBV_WR_SEND_WITH_INV, [m.sge(0, n)], imm=rkey,
                    flags=abi.IBV_SEND_SIGNALED | abi.IBV_SEND_SOLICITED)
    return [data for data, _addr in a.dev.take_tx()]

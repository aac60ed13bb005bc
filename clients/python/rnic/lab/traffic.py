"""All-to-all RC traffic across a lab, checked end to end: one RC connection per ordered pair
of hosts (N·(N-1) connections), SIZE bytes RDMA-written each way on each, every transfer's
SHA-256 compared between what the sender wrote and what landed in the receiver's memory.

One driver process holds a context on every host's rnicd (the data moves between the daemons,
over the lab's network). Pairs meet in round-robin rounds (each host in one pair per round),
`window` rounds at a time, so memory stays at 4 × SIZE × window per host."""
from __future__ import annotations

import hashlib
import os
import time

import rnic.enums as e

RC_ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
             | e.IBV_ACCESS_REMOTE_READ)


def parse_size(text: str) -> int:
    text = str(text).strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    n = int(text[:-1] if text[-1:] in "KMG" else text) * mult
    if not 64 <= n <= 1 << 30:
        raise ValueError(f"size {text} out of range (64 B .. 1 GiB)")
    return n


def rounds(n: int) -> list[list[tuple[int, int]]]:
    """Round-robin tournament (circle method): every unordered pair once, each index in at
    most one pair per round."""
    idx = list(range(n)) + ([None] if n % 2 else [])
    m, out = len(idx), []
    for _ in range(m - 1):
        out.append([(a, b) for a, b in zip(idx[:m // 2], reversed(idx[m // 2:]), strict=True)
                    if a is not None and b is not None])
        idx = [idx[0], idx[-1], *idx[1:-1]]
    return out


class _Host:
    def __init__(self, host, size: int, window: int):
        from rnic.cq import CQ
        from rnic.device import Context
        from rnic.mr import MR
        from rnic.pd import PD
        self.host = host
        self.ctx = Context(socket=host.socket)
        self.pd = PD(self.ctx)
        self.slots = 4 * window              # per round: 2 out + 2 in
        self.mr = MR(self.pd, size * self.slots, RC_ACCESS)
        self.cq = CQ(self.ctx, 8 * window + 16, None, None, 0)
        self.gid = self.ctx.query_gid(1, 0)
        self.mtu = self.ctx.query_port(1).active_mtu

    def qp(self):
        from rnic.qp import QP, QPCap, QPInitAttr
        return QP(self.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq,
                                      cap=QPCap(max_send_wr=4, max_recv_wr=1, max_send_sge=1,
                                                max_recv_sge=1), sq_sig_all=0))

    def close(self):
        self.ctx.close()


def _connect(qp, peer_qpn: int, peer_gid, my_psn: int, peer_psn: int, mtu: int):
    from rnic.addr import AHAttr, GlobalRoute
    from rnic.qp import QPAttr
    a = QPAttr()
    a.qp_access_flags = RC_ACCESS
    a.path_mtu, a.dest_qp_num, a.rq_psn, a.sq_psn = mtu, peer_qpn, peer_psn, my_psn
    a.max_dest_rd_atomic = a.max_rd_atomic = 1
    a.min_rnr_timer, a.timeout, a.retry_cnt, a.rnr_retry = 1, 14, 7, 7
    a.ah_attr = AHAttr(port_num=1, is_global=1, gr=GlobalRoute(dgid=peer_gid, sgid_index=0))
    qp.to_init(a)
    qp.to_rtr(a)
    qp.to_rts(a)


def all_to_all(hosts, size: int = 1 << 20, window: int | None = None,
               timeout: float = 600.0, progress=None) -> dict:
    """Run it; a dict of figures (connections, bytes, seconds, MBps, mismatches, errors, ok)."""
    from rnic.wr import SGE, SendWR
    n = len(hosts)
    window = window or max(1, min(8, 256 // max(n, 1)))
    pool = os.urandom(2 * size)
    t0 = time.monotonic()
    hs = [_Host(h, size, window) for h in hosts]
    t_setup = time.monotonic() - t0
    mtu = min(h.mtu for h in hs)
    sched = rounds(n)
    res = {"hosts": n, "connections": 0, "bytes": 0, "mismatches": 0, "errors": 0,
           "error_examples": []}
    t_conn = t_data = 0.0
    try:
        for g in range(0, len(sched), window):
            group = sched[g:g + window]
            t1 = time.monotonic()
            ends = []        # (host idx, qp, out offset, peer idx, peer in offset, digest)
            for w, pairs in enumerate(group):
                for a, b in pairs:
                    for c in range(2):               # two connections per unordered pair
                        qa, qb = hs[a].qp(), hs[b].qp()
                        psn_a, psn_b = (a * 7919 + b) & 0xFFFFFF, (b * 7919 + a) & 0xFFFFFF
                        _connect(qa, qb.qp_num, hs[b].gid, psn_a, psn_b, mtu)
                        _connect(qb, qa.qp_num, hs[a].gid, psn_b, psn_a, mtu)
                        base = 4 * w * size
                        out_s, in_s = base + c * size, base + (2 + c) * size
                        ends.append([a, qa, out_s, b, in_s, None])
                        ends.append([b, qb, out_s, a, in_s, None])
                        res["connections"] += 1
            t2 = time.monotonic()
            t_conn += t2 - t1
            for i, end in enumerate(ends):           # distinct data per transfer
                src, qp, out_s, dst, in_s, _ = end
                off = (i * 104729 + g * 7 + src * 31 + dst) % size
                data = bytearray(pool[off:off + size])
                data[:16] = (src.to_bytes(4, "big") + dst.to_bytes(4, "big")
                             + g.to_bytes(4, "big") + i.to_bytes(4, "big"))
                hs[src].mr.write(data, size, out_s)
                end[5] = hashlib.sha256(data).digest()
                wr = SendWR(wr_id=i, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                            send_flags=e.IBV_SEND_SIGNALED,
                            sg=[SGE(hs[src].mr.buf + out_s, size, hs[src].mr.lkey)])
                wr.set_wr_rdma(hs[dst].mr.rkey, hs[dst].mr.buf + in_s)
                qp.post_send(wr)
            done, deadline = 0, time.monotonic() + timeout
            while done < len(ends):
                got_any = False
                for h in hs:
                    got, wcs = h.cq.poll(16)
                    for wc in wcs[:got]:
                        got_any = True
                        done += 1
                        if wc.status != e.IBV_WC_SUCCESS:
                            res["errors"] += 1
                            if len(res["error_examples"]) < 5:
                                res["error_examples"].append(
                                    f"{hosts[ends[wc.wr_id][0]].name}->"
                                    f"{hosts[ends[wc.wr_id][3]].name}: status {wc.status}")
                if not got_any:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{len(ends) - done} of {len(ends)} transfers not "
                                           f"completed after {timeout} s")
                    time.sleep(0.0005)
            for _src, qp, _out, dst, in_s, digest in ends:
                landed = hashlib.sha256(memoryview(hs[dst].mr.mmap)[in_s:in_s + size])
                if landed.digest() != digest:
                    res["mismatches"] += 1
                res["bytes"] += size
                qp.close()
            t_data += time.monotonic() - t2
            if progress:
                progress(res["connections"], n * (n - 1))
    finally:
        for h in hs:
            h.close()
    secs = time.monotonic() - t0
    res |= {"size": size, "window": window, "seconds": round(secs, 3),
            "setup_s": round(t_setup, 3), "connect_s": round(t_conn, 3),
            "transfer_s": round(t_data, 3), "path_mtu": 128 << mtu,
            "MBps": round(res["bytes"] / max(t_data, 1e-9) / 1e6, 1),
            "ok": res["errors"] == 0 and res["mismatches"] == 0
            and res["connections"] == n * (n - 1)}
    return res

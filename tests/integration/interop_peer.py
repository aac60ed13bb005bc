"""One side of tests/integration/test_pyverbs_interop.py: an RC QP that exchanges RDMA WRITE,
SEND and RDMA WRITE with immediate with the other side, driven by the test through JSON lines
(stdin: commands, stdout: replies).

    /usr/bin/python3 interop_peer.py pyverbs   # Debian's pyverbs, run through `rnic exec`
    python interop_peer.py rnic                # the rnic client (RNIC_SOCKET names the daemon)

Both bindings have pyverbs' shape, so one script serves both; the one difference is imm_data:
pyverbs hands the raw __be32 of ibv_send_wr/ibv_wc (the program converts with htonl/ntohl,
as rdma-core's tests do), rnic an int that travels big-endian (docs/python-client.md).

Protocol: the peer prints {"hello": {qpn, gid, addr, rkey, ...}}; it reads {"peer": ...,
"send": {write, send, wimm, imm}, "expect": {...}} (payloads base64), connects its QP
(INIT, RTR, RTS), posts its receives and prints {"ready": true}; on {"go": true} it posts its
WRITE (64 KiB), SEND (4 KiB) and WRITE_WITH_IMM, waits for its three send completions and two
receive completions, checks them and the bytes that arrived, and prints {"result": ...}; it
closes on {"bye": true} (after the peer is done too, so neither tears down a QP still in use).
"""
import base64
import hashlib
import json
import os
import socket
import sys
import time

IMPL = sys.argv[1]
if IMPL == "pyverbs":
    import pyverbs
    import pyverbs.enums as e
    from pyverbs.addr import GID, AHAttr, GlobalRoute
    from pyverbs.cq import CQ
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
    from pyverbs.wr import SGE, RecvWR, SendWR
    binding = pyverbs.__file__

    def imm_out(v):
        return socket.htonl(v)

    def imm_in(v):
        return socket.ntohl(v)
else:
    import rnic
    import rnic.enums as e
    from rnic.addr import GID, AHAttr, GlobalRoute
    from rnic.cq import CQ
    from rnic.device import Context
    from rnic.mr import MR
    from rnic.pd import PD
    from rnic.qp import QP, QPAttr, QPCap, QPInitAttr
    from rnic.wr import SGE, RecvWR, SendWR
    binding = rnic.__file__

    def imm_out(v):
        return v

    def imm_in(v):
        return v

WRITE_LEN, SEND_LEN, WIMM_LEN = 64 * 1024, 4096, 1024
# target: [0, 64K) the peer's WRITE, [64K, 65K) its WRITE_WITH_IMM; recv: the peer's SEND
ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ)
PSN = 0x1234 if IMPL == "pyverbs" else 0x4321


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read_cmd():
    line = sys.stdin.readline()
    if not line:
        sys.exit(f"{IMPL}: stdin closed")
    return json.loads(line)


def loaded_libibverbs():
    """The path of the libibverbs.so.1 mapped into this process (which library pyverbs runs
    on), or None."""
    with open("/proc/self/maps") as f:
        for ln in f:
            path = ln.split()[-1]
            if os.path.basename(path).startswith("libibverbs.so"):
                return os.path.realpath(path)
    return None


def poll(cq, n, timeout=30.0):
    wcs, deadline = [], time.monotonic() + timeout
    while len(wcs) < n:
        got, batch = cq.poll(n - len(wcs))
        if got:
            wcs.extend(batch[:got])
        elif time.monotonic() > deadline:
            raise TimeoutError(f"{IMPL}: {len(wcs)} of {n} completions after {timeout} s")
        else:
            time.sleep(0.0005)
    return wcs


def main():
    ctx = Context(name="rnic0")
    pd = PD(ctx)
    target = MR(pd, WRITE_LEN + WIMM_LEN, ACCESS)        # the peer writes here
    recv = MR(pd, SEND_LEN + 512, ACCESS)                # the peer's SEND lands here
    src = MR(pd, WRITE_LEN + SEND_LEN + WIMM_LEN, ACCESS)  # what this side sends
    scq, rcq = CQ(ctx, 16, None, None, 0), CQ(ctx, 16, None, None, 0)
    cap = QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=1, max_recv_sge=1)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=scq, rcq=rcq, cap=cap, sq_sig_all=0))
    gid = ctx.query_gid(1, 0)
    out({"hello": {"qpn": qp.qp_num, "gid": str(gid), "addr": target.buf,
                   "rkey": target.rkey, "psn": PSN, "binding": binding,
                   "libibverbs": loaded_libibverbs()}})

    cmd = read_cmd()
    peer, mine, exp = cmd["peer"], cmd["send"], cmd["expect"]
    w_data = base64.b64decode(mine["write"])
    s_data = base64.b64decode(mine["send"])
    i_data = base64.b64decode(mine["wimm"])
    src.write(w_data + s_data + i_data, len(w_data) + len(s_data) + len(i_data))
    target.write(b"\0" * (WRITE_LEN + WIMM_LEN), WRITE_LEN + WIMM_LEN)
    recv.write(b"\0" * (SEND_LEN + 512), SEND_LEN + 512)

    # RESET -> INIT -> RTR -> RTS with the peer's QPN, PSN and GID (RoCEv2: a GRH, GID 0)
    a = QPAttr()
    a.qp_state, a.pkey_index, a.port_num, a.qp_access_flags = e.IBV_QPS_INIT, 0, 1, ACCESS
    qp.modify(a, e.IBV_QP_STATE | e.IBV_QP_PKEY_INDEX | e.IBV_QP_PORT | e.IBV_QP_ACCESS_FLAGS)
    a = QPAttr()
    a.qp_state, a.path_mtu, a.dest_qp_num, a.rq_psn = (e.IBV_QPS_RTR, e.IBV_MTU_1024,
                                                       peer["qpn"], peer["psn"])
    a.max_dest_rd_atomic, a.min_rnr_timer = 1, 12
    a.ah_attr = AHAttr(port_num=1, is_global=1,
                       gr=GlobalRoute(dgid=GID(peer["gid"]), sgid_index=0, hop_limit=64))
    qp.modify(a, e.IBV_QP_STATE | e.IBV_QP_AV | e.IBV_QP_PATH_MTU | e.IBV_QP_DEST_QPN
              | e.IBV_QP_RQ_PSN | e.IBV_QP_MAX_DEST_RD_ATOMIC | e.IBV_QP_MIN_RNR_TIMER)
    a = QPAttr()
    a.qp_state, a.sq_psn, a.timeout, a.retry_cnt, a.rnr_retry, a.max_rd_atomic = (
        e.IBV_QPS_RTS, PSN, 14, 7, 7, 1)
    qp.modify(a, e.IBV_QP_STATE | e.IBV_QP_SQ_PSN | e.IBV_QP_TIMEOUT | e.IBV_QP_RETRY_CNT
              | e.IBV_QP_RNR_RETRY | e.IBV_QP_MAX_QP_RD_ATOMIC)

    # two receives: the peer's SEND, then its WRITE_WITH_IMM (which consumes one, no data)
    qp.post_recv(RecvWR(wr_id=101, num_sge=1, sg=[SGE(recv.buf, SEND_LEN + 512, recv.lkey)]))
    qp.post_recv(RecvWR(wr_id=102, num_sge=1, sg=[SGE(recv.buf, 16, recv.lkey)]))
    out({"ready": True})
    read_cmd()   # go

    wr = SendWR(wr_id=1, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                sg=[SGE(src.buf, WRITE_LEN, src.lkey)], send_flags=e.IBV_SEND_SIGNALED)
    wr.set_wr_rdma(peer["rkey"], peer["addr"])
    qp.post_send(wr)
    qp.post_send(SendWR(wr_id=2, opcode=e.IBV_WR_SEND, num_sge=1,
                        sg=[SGE(src.buf + WRITE_LEN, SEND_LEN, src.lkey)],
                        send_flags=e.IBV_SEND_SIGNALED))
    wr = SendWR(wr_id=3, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, num_sge=1,
                imm_data=imm_out(mine["imm"]),
                sg=[SGE(src.buf + WRITE_LEN + SEND_LEN, WIMM_LEN, src.lkey)],
                send_flags=e.IBV_SEND_SIGNALED)
    wr.set_wr_rdma(peer["rkey"], peer["addr"] + WRITE_LEN)
    qp.post_send(wr)

    errors = []
    swc = poll(scq, 3)
    want = [(1, e.IBV_WC_RDMA_WRITE), (2, e.IBV_WC_SEND), (3, e.IBV_WC_RDMA_WRITE)]
    for wc, (wr_id, op) in zip(swc, want, strict=True):
        if (wc.wr_id, wc.status, wc.opcode) != (wr_id, e.IBV_WC_SUCCESS, op):
            errors.append(f"send wc {wr_id}: wr_id {wc.wr_id} status {wc.status} "
                          f"opcode {wc.opcode}, want status 0 opcode {op}")
    rwc = poll(rcq, 2)
    r0, r1 = rwc
    if (r0.wr_id, r0.status, r0.opcode, r0.byte_len, r0.wc_flags & e.IBV_WC_WITH_IMM) != \
            (101, e.IBV_WC_SUCCESS, e.IBV_WC_RECV, exp["send_len"], 0):
        errors.append(f"recv wc 1: wr_id {r0.wr_id} status {r0.status} opcode {r0.opcode} "
                      f"byte_len {r0.byte_len} wc_flags {r0.wc_flags}; want 101, 0, "
                      f"IBV_WC_RECV, {exp['send_len']}, no immediate")
    got_imm = imm_in(r1.imm_data)
    if (r1.wr_id, r1.status, r1.opcode, r1.byte_len) != \
            (102, e.IBV_WC_SUCCESS, e.IBV_WC_RECV_RDMA_WITH_IMM, exp["wimm_len"]) \
            or not r1.wc_flags & e.IBV_WC_WITH_IMM or r1.qp_num != qp.qp_num:
        errors.append(f"recv wc 2: wr_id {r1.wr_id} status {r1.status} opcode {r1.opcode} "
                      f"byte_len {r1.byte_len} wc_flags {r1.wc_flags} qp_num {r1.qp_num}; "
                      f"want 102, 0, IBV_WC_RECV_RDMA_WITH_IMM, {exp['wimm_len']}, WITH_IMM")
    if got_imm != exp["imm"]:
        errors.append(f"immediate {got_imm:#x}, want {exp['imm']:#x}")
    wrote = target.read(WRITE_LEN, 0)
    wimm = target.read(WIMM_LEN, WRITE_LEN)
    sent = recv.read(SEND_LEN + 512, 0)
    got = {"write": hashlib.sha256(wrote).hexdigest(),
           "send": hashlib.sha256(sent[:r0.byte_len]).hexdigest(),
           "wimm": hashlib.sha256(wimm).hexdigest(), "imm": got_imm}
    for k in ("write", "send", "wimm"):
        if got[k] != exp[k]:
            errors.append(f"{k}: sha256 {got[k]}, want {exp[k]}")
    if sent[r0.byte_len:] != b"\0" * (SEND_LEN + 512 - r0.byte_len):
        errors.append("the SEND wrote past its length")
    out({"result": {"errors": errors, "got": got}})
    read_cmd()   # bye
    qp.close()
    ctx.close()


if __name__ == "__main__":
    main()

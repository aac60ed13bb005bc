"""An rdma_cm program run inside a test host's namespace (python cm_peer.py MODE ...).
Prints one JSON object per line for the test to read.

  serve SOCKET IP PORT N            accept N connections (reject those whose private data
                                    starts with b"reject"), wait for each to disconnect
  connect SOCKET DST PORT DATA      connect with DATA as private data, then disconnect
  offload-serve SOCKET IP PORT N    listen with establishment offload until N connections
                                    arrived; then wait for one SEND on each
  offload-connect SOCKET DST PORT N open N connections at once (async), SEND on each
"""
import asyncio
import json
import os
import sys
import time

import rnic.enums as e
from rnic.cmid import (
    CMID,
    RAI_PASSIVE,
    AddrInfo,
    CMEventChannel,
    CMEventType,
    ConnParam,
    OffloadTemplate,
)
from rnic.cq import CQ
from rnic.mr import MR
from rnic.pd import PD
from rnic.qp import QPCap, QPInitAttr
from rnic.wr import SGE, SendWR

E = CMEventType
CAP = QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=1, max_recv_sge=1)
MSG = 64


def out(**kw):
    print(json.dumps(kw), flush=True)


def serve(sock, ip, port, n):
    with CMID(creator=AddrInfo(src=ip, service=port, flags=RAI_PASSIVE), socket=sock) as lid:
        lid.listen()
        out(listening=True)
        for _ in range(int(n)):
            cid = lid.get_request(timeout=30)
            data = cid.private_data.rstrip(b"\0")
            if data.startswith(b"reject"):
                cid.reject(b"no thanks")
                out(rejected=data.decode(), peer=cid.remote_ip)
                cid.close()
                continue
            cid.create_qp(QPInitAttr(cap=CAP))
            cid.accept(ConnParam(private_data=b"hi " + data))
            ev = cid.wait_event(E.RDMA_CM_EVENT_DISCONNECTED)
            out(accepted=data.decode(), peer=cid.remote_ip, disconnected=ev.event_type.name)
            cid.close()


def connect(sock, dst, port, data):
    with CMID(creator=AddrInfo(dst=dst, service=port), qp_init_attr=QPInitAttr(cap=CAP),
              socket=sock) as cid:
        try:
            cid.connect(ConnParam(private_data=data.encode()))
        except OSError as exc:
            ev = exc.event
            return out(error=exc.errno, status=ev.status,
                       private_data=ev.private_data.rstrip(b"\0").decode())
        reply = cid.private_data.rstrip(b"\0").decode()
        cid.disconnect()
        out(established=reply, source=cid.local_ip)


def offload_serve(sock, ip, port, n):
    n = int(n)
    ch = CMEventChannel(socket=sock)
    pd = PD(ch.context)
    cq = CQ(ch.context, 2 * n + 16)
    mr = MR(pd, n * MSG, e.IBV_ACCESS_LOCAL_WRITE)
    template = OffloadTemplate(pd, QPInitAttr(scq=cq, rcq=cq, cap=CAP), recv_mr=mr,
                               recv_length=MSG, recv_count=1,
                               notify_usec=200_000)   # a wide window: robust on slow hosts
    lid = CMID(creator=ch)
    lid.bind_addr(AddrInfo(src=ip, service=port, flags=RAI_PASSIVE))
    lid.listen(backlog=n, offload=template)
    out(listening=True)
    conns, notes, t0 = [], 0, None
    while len(conns) < n:
        ev = ch.get_cm_event(timeout=60)
        assert ev is not None, f"only {len(conns)} connections arrived"
        if ev.event_type == E.RNIC_CM_EVENT_OFFLOAD_ESTABLISHED:
            t0 = t0 or time.monotonic()
            notes += 1
            conns += ev.conns
    # every connection's pre-posted receive takes one SEND from the client
    got, deadline = {}, time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        k, wcs = cq.poll(64)
        for wc in wcs:
            assert wc.status == e.IBV_WC_SUCCESS, wc
            got[wc.qp_num] = mr.read(wc.byte_len, wc.wr_id - mr.buf)
        if not k:
            time.sleep(0.001)
    ok = sum(v == f"conn {q}".encode().ljust(16) for q, v in got.items())
    qp = conns[0].open_qp()            # the rings of one daemon-made QP, mapped on demand
    out(connections=len(conns), notifications=notes, received=len(got), verified=ok,
        qp_state=int(qp.query()[0].qp_state), distinct_peers=len({c.remote_ip for c in conns}))


async def offload_connect(sock, dst, port, n):
    n = int(n)
    ch = CMEventChannel(socket=sock)
    pd = PD(ch.context)
    cq = CQ(ch.context, 2 * n + 16)
    mr = MR(pd, 16 * n, e.IBV_ACCESS_LOCAL_WRITE)
    ids = {}
    t0 = time.monotonic()
    for _ in range(n):
        cid = CMID(creator=ch)
        cid.pd = pd
        cid.resolve_addr(AddrInfo(dst=dst, service=port))
        cid.resolve_route()
        cid.create_qp(QPInitAttr(scq=cq, rcq=cq, cap=CAP))
        cid.connect()
        ids[cid.handle] = cid
    posted = time.monotonic()
    established = 0
    while established < n:
        ev = await asyncio.wait_for(ch.get_cm_event_async(), 60)
        if ev.event_type == E.RDMA_CM_EVENT_ESTABLISHED:
            established += 1
        elif ev.event_type not in (E.RDMA_CM_EVENT_ADDR_RESOLVED,
                                   E.RDMA_CM_EVENT_ROUTE_RESOLVED):
            raise SystemExit(f"unexpected {ev} after {established} established")
    took = time.monotonic() - t0
    # the server keys messages by its QPN: send each connection's remote QPN
    for i, cid in enumerate(ids.values()):
        remote_qpn = cid.qp.query()[0].dest_qp_num
        mr.write(f"conn {remote_qpn}".encode().ljust(16), 16, 16 * i)
        cid.qp.post_send(SendWR(wr_id=i, num_sge=1, sg=[SGE(mr.buf + 16 * i, 16, mr.lkey)]))
    done, deadline = 0, time.monotonic() + 60
    while done < n and time.monotonic() < deadline:
        k, wcs = cq.poll(64)
        assert all(w.status == e.IBV_WC_SUCCESS for w in wcs), wcs
        done += k
        if not k:
            await asyncio.sleep(0.001)
    out(established=established, seconds=round(took, 3), rate=round(n / took, 1),
        post_seconds=round(posted - t0, 3), sends_completed=done)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "offload-connect":
        asyncio.run(offload_connect(*args))
    else:
        {"serve": serve, "connect": connect, "offload-serve": offload_serve}[mode](*args)
    sys.stdout.flush()
    os._exit(0)

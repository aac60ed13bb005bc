"""Shared contexts (ibv_import_device / _pd / _mr): a second Context joins a context through a
dup of its command fd, here or in another process, and uses its PD and MR; an fd that is not
a context's command socket is refused; the objects live until the last sharer closes."""
import errno
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import rnic.enums as e
from rc_pair import Side, connect, poll_n
from rnic.cq import CQ
from rnic.device import Context
from rnic.errors import RnicError
from rnic.mr import MR
from rnic.pd import PD
from rnic.qp import QP, QPCap, QPInitAttr
from rnic.wr import SGE, RecvWR, SendWR


def test_imported_pd_and_mr_carry_traffic_after_the_exporter_closes(two_daemons):
    da, db = two_daemons
    a, b = Side(da), Side(db)
    exporter = Context(socket=da.socket)
    pd = PD(exporter)
    mr = MR(pd, 8192, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
            | e.IBV_ACCESS_REMOTE_READ)
    try:
        shared = Context(cmd_fd=os.dup(exporter.cmd_fd))
        ipd = PD(shared, handle=pd.handle)
        imr = MR(ipd, handle=mr.handle, address=mr.buf)
        assert (imr.lkey, imr.rkey, imr.length) == (mr.lkey, mr.rkey, 8192)
        # a QP made through the importer, on the imported PD, replaces a's own
        cq = CQ(shared, 64, None, None, 0)
        qp = QP(ipd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                cap=QPCap(max_send_wr=16, max_recv_wr=16)))
        a.qp, a.cq = qp, cq
        connect(a, b)
        b.mr.write(b"from b " * 10, 70, 0)
        b.qp.post_send(_write_wr(b, imr))
        assert poll_n(b.cq, 1)[0].status == e.IBV_WC_SUCCESS
        assert mr.read(70, 0) == imr.read(70, 0) == b"from b " * 10
        # The exporter closes: its MR's memory is gone from this process (as a pyverbs MR
        # frees its buffer), but the context, the MR and the QP live on through `shared`
        exporter.close()
        qp.post_recv(RecvWR(wr_id=2, num_sge=1, sg=[SGE(imr.buf + 4096, 100, imr.lkey)]))
        b.qp.post_send(SendWR(wr_id=3, opcode=e.IBV_WR_SEND, num_sge=1,
                              sg=[SGE(b.mr.buf, 7, b.mr.lkey)]))
        assert poll_n(cq, 1)[0].status == e.IBV_WC_SUCCESS
        rd = SendWR(wr_id=4, opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                    sg=[SGE(b.mr.buf + 8192, 7, b.mr.lkey)])
        rd.set_wr_rdma(imr.rkey, imr.buf + 4096)          # b reads what its SEND put there
        b.qp.post_send(rd)
        assert poll_n(b.cq, 2)[-1].status == e.IBV_WC_SUCCESS
        assert b.mr.read(7, 8192) == b"from b "
        imr.unimport()
        ipd.unimport()
        ipd.close()               # after unimport: nothing to destroy
        with Context(socket=da.socket) as probe:
            assert probe.get_objects()["mrs"] >= 2          # the shared MR is still there
        shared.close()
        with Context(socket=da.socket) as probe:
            assert probe.get_objects()["contexts"] == 2     # b's daemon is separate: a + probe
    finally:
        exporter.close()
        a.close()
        b.close()


def _write_wr(b, imr):
    wr = SendWR(wr_id=1, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                sg=[SGE(b.mr.buf, 70, b.mr.lkey)])
    wr.set_wr_rdma(imr.rkey, imr.buf)
    return wr


def test_import_from_another_process(rnicd):
    d = rnicd("imp")
    with Context(socket=d.socket) as ctx:
        pd = PD(ctx)
        mr = MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
        mr.write(b"shared memory", 13, 0)
        fd = os.dup(ctx.cmd_fd)
        code = textwrap.dedent(f"""
            from rnic.device import Context
            from rnic.mr import MR
            from rnic.pd import PD
            ctx = Context(cmd_fd={fd})
            mr = MR(PD(ctx, handle={pd.handle}), handle={mr.handle})
            print(mr.lkey, mr.length, ctx.query_device().name)
        """)
        r = subprocess.run([sys.executable, "-c", code], pass_fds=(fd,), capture_output=True,
                           text=True, timeout=30)
        os.close(fd)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(mr.lkey), "4096", "rnic0"]
        assert mr.read(13, 0) == b"shared memory"        # nothing was destroyed


def test_an_fd_that_is_no_context_is_refused(rnicd):
    d = rnicd("imp")
    with Context(socket=d.socket) as ctx:
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.connect(d.socket)                  # a socket to the daemon, but no context
        with pytest.raises(RnicError) as ei:
            Context(cmd_fd=other.detach())
        assert ei.value.code == errno.ENOENT
        with pytest.raises(RnicError) as ei:
            PD(ctx, handle=999)
        assert ei.value.code == errno.ENOENT
        r, w = os.pipe()
        with pytest.raises(RnicError) as ei:
            Context(cmd_fd=r)
        assert ei.value.code == errno.EBADF
        os.close(r), os.close(w)

"""Packets captured on lo are RoCEv2 as tshark dissects it, with ICRCs that scapy verifies."""
import os
import shutil
import subprocess

import pytest
import rnic.enums as e
from capture import capture_on_lo
from rc_pair import Side, connect, poll_n
from rnic.wr import SGE, RecvWR, SendWR

from rnicd.wire import opcodes


def _need_capture():
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed (make sysdeps installs it)")
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    try:
        from scapy.contrib import roce  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"scapy.contrib.roce not importable: {exc}")


@pytest.fixture
def unsegmented(rnicd):
    """Two daemons whose engines send each datagram alone: with UDP GSO a capture on lo
    sees a run as the one datagram it was handed to the kernel as (tshark cannot split it;
    test_gso_segments_on_the_wire checks what the segments look like)."""
    return rnicd("a", extra=("--udp-gso", "off")), rnicd("b", extra=("--udp-gso", "off"))


def test_capture_dissects_as_roce_and_icrc_verifies(unsegmented, tmp_path):
    _need_capture()
    da, db = unsegmented
    pcap = tmp_path / "roce.pcap"
    with capture_on_lo(pcap, da.ip):
        a, b = Side(da), Side(db)
        connect(a, b, psn=(1000, 2000))
        b.qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(b.mr.buf, 8192, b.mr.lkey)]))
        a.qp.post_send(SendWR(wr_id=1, opcode=e.IBV_WR_SEND, num_sge=1,
                              sg=[SGE(a.mr.buf, 3000, a.mr.lkey)]))    # FIRST, MIDDLE, LAST
        w = SendWR(wr_id=2, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                   sg=[SGE(a.mr.buf, 100, a.mr.lkey)])
        w.set_wr_rdma(b.mr.rkey, b.mr.buf + 8192)
        a.qp.post_send(w)
        r = SendWR(wr_id=3, opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                   sg=[SGE(a.mr.buf + 8192, 2000, a.mr.lkey)])
        r.set_wr_rdma(b.mr.rkey, b.mr.buf)
        a.qp.post_send(r)
        assert all(w.status == e.IBV_WC_SUCCESS for w in poll_n(a.cq, 3))
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", "udp.port==4791,infiniband",
                          "-T", "fields", "-e", "ip.src", "-e", "infiniband.bth.opcode",
                          "-e", "infiniband.bth.destqp", "-e", "infiniband.bth.psn"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    requests = [(int(op), int(qp, 0), int(psn)) for src, op, qp, psn in rows if src == da.ip]
    O = opcodes.Opcode
    assert requests[:5] == [(O.RC_SEND_FIRST, b.qp.qp_num, 1000),
                            (O.RC_SEND_MIDDLE, b.qp.qp_num, 1001),
                            (O.RC_SEND_LAST, b.qp.qp_num, 1002),
                            (O.RC_RDMA_WRITE_ONLY, b.qp.qp_num, 1003),
                            (O.RC_RDMA_READ_REQUEST, b.qp.qp_num, 1004)]
    responses = [(int(op), int(qp, 0)) for src, op, qp, psn in rows if src == db.ip]
    assert (O.RC_RDMA_READ_RESPONSE_FIRST, a.qp.qp_num) in responses
    assert (O.RC_ACKNOWLEDGE, a.qp.qp_num) in responses

    from scapy.contrib.roce import BTH
    from scapy.layers.inet import IP
    from scapy.utils import rdpcap
    packets = [p for p in rdpcap(str(pcap)) if BTH in p]
    assert len(packets) == len(rows) >= 8
    for p in packets:
        assert p[IP].id == 0 and p[IP].flags == "DF"      # what the ICRC assumes (A17.3.3)
        assert p[BTH].compute_icrc(None) == p[BTH].icrc.to_bytes(4, "big"), p.summary()
    a.close()
    b.close()


def test_uc_capture_dissects_and_icrc_verifies(unsegmented, tmp_path):
    """UC as captured: UC opcodes (0x20-0x2B) with AckReq clear, nothing coming back, ICRCs
    that scapy verifies."""
    _need_capture()
    da, db = unsegmented
    pcap = tmp_path / "uc.pcap"
    with capture_on_lo(pcap, da.ip):
        a, b = Side(da, qp_type=e.IBV_QPT_UC), Side(db, qp_type=e.IBV_QPT_UC)
        connect(a, b, psn=(1000, 2000), qp_access=e.IBV_ACCESS_LOCAL_WRITE
                | e.IBV_ACCESS_REMOTE_WRITE)
        for i in range(2):
            b.qp.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(b.mr.buf, 8192, b.mr.lkey)]))
        a.qp.post_send(SendWR(wr_id=1, opcode=e.IBV_WR_SEND, num_sge=1,
                              sg=[SGE(a.mr.buf, 3000, a.mr.lkey)]))    # FIRST, MIDDLE, LAST
        w = SendWR(wr_id=2, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, num_sge=1,
                   sg=[SGE(a.mr.buf, 100, a.mr.lkey)])
        w.set_wr_rdma(b.mr.rkey, b.mr.buf + 8192)
        w.imm_data = 0x01020304
        a.qp.post_send(w)
        assert all(w.status == e.IBV_WC_SUCCESS for w in poll_n(a.cq, 2))
        assert [w.wr_id for w in poll_n(b.cq, 2)] == [0, 1]
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", "udp.port==4791,infiniband",
                          "-T", "fields", "-e", "ip.src", "-e", "infiniband.bth.opcode",
                          "-e", "infiniband.bth.destqp", "-e", "infiniband.bth.psn",
                          "-e", "infiniband.bth.a", "-e", "infiniband.immdt",
                          "-E", "occurrence=f"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    O = opcodes.Opcode
    assert [(r[0], int(r[1]), int(r[2], 0), int(r[3]), int(r[4]), r[5]) for r in rows] == [
        (da.ip, O.UC_SEND_FIRST, b.qp.qp_num, 1000, 0, ""),
        (da.ip, O.UC_SEND_MIDDLE, b.qp.qp_num, 1001, 0, ""),
        (da.ip, O.UC_SEND_LAST, b.qp.qp_num, 1002, 0, ""),
        (da.ip, O.UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE, b.qp.qp_num, 1003, 0, "01020304")]

    from scapy.contrib.roce import BTH
    from scapy.utils import rdpcap
    packets = [p for p in rdpcap(str(pcap)) if BTH in p]
    assert len(packets) == 4
    for p in packets:
        assert p[BTH].compute_icrc(None) == p[BTH].icrc.to_bytes(4, "big"), p.summary()
    a.close()
    b.close()

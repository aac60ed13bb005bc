"""Wireshark's InfiniBand dissector (tshark) as an independent decoder of what build() emits."""
import struct
import subprocess

from rnicd.wire import roce
from rnicd.wire.opcodes import OPCODES, Hdr, Transport

SRC, DST, SPORT = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7]), 49152
FLOW = dict(src_ip=SRC, dst_ip=DST, sport=SPORT)
LINKTYPE_RAW = 101  # pcap link type: the record starts at the IPv4 header

EXT = {
    Hdr.RETH: dict(reth_va=0x8123456789ABCDEF, reth_rkey=0xF00DBEEF, reth_len=0x1234),
    Hdr.AETH: dict(aeth_syndrome=0x62, aeth_msn=0xABCDEF),
    Hdr.ATOMICETH: dict(atomic_va=0xFFFF000011112222, atomic_rkey=0x89ABCDEF,
                        atomic_swap_add=0x8000000000000001, atomic_compare=0x0123456789ABCDEF),
    Hdr.ATOMICACKETH: dict(atomic_orig=0xDEADBEEFCAFEF00D),
    Hdr.IMMDT: dict(imm=0x80A0B0C0),
    Hdr.IETH: dict(ieth_rkey=0xA5A5A5A5),
    Hdr.DETH: dict(deth_qkey=0x80010002, deth_src_qp=0xABCDEF),
    Hdr.XRCETH: dict(xrc_srqn=0xC0FFEE),
}
FIELDS = (
    "infiniband.bth.opcode", "infiniband.bth.destqp", "infiniband.bth.psn",
    "infiniband.bth.a", "infiniband.bth.se", "infiniband.bth.padcnt", "infiniband.bth.p_key",
    "infiniband.reth.va", "infiniband.reth.r_key", "infiniband.reth.dmalen",
    "infiniband.aeth.syndrome", "infiniband.aeth.msn",
    "infiniband.atomiceth.swapdt", "infiniband.atomiceth.cmpdt",
    "infiniband.atomicacketh.origremdt",
    "infiniband.deth.q_key", "infiniband.deth.srcqp",
    "infiniband.immdt", "infiniband.ieth", "infiniband.invariant.crc", "data.data",
    "infiniband.vendor",
)


def ipv4_udp(payload: bytes, src=SRC, dst=DST, sport=SPORT) -> bytes:
    udp = struct.pack("!HHHH", sport, roce.ROCEV2_PORT, 8 + len(payload), 0) + payload
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                                src, dst))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr) + udp


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)))
            f.write(frame)


def packets():
    out = []
    for i, op in enumerate(sorted(OPCODES)):
        info = OPCODES[op]
        fields = dict(opcode=op, dest_qp=0x100000 + i, psn=(0xFFFFF0 + i) & 0xFFFFFF,
                      ackreq=bool(i & 1), se=bool(i & 2), pkey=0xFFFF)
        for h in info.ext:
            fields.update(EXT[h])
        n = (13 if info.is_last else 256) if info.has_payload else 0
        out.append(roce.Packet(**fields, payload=bytes(range(n))))
    return out


def test_tshark_dissects_our_packets(tshark, tmp_path):
    pkts = packets()
    built = [roce.build(p, **FLOW) for p in pkts]
    pcap = tmp_path / "rocev2.pcap"
    write_pcap(pcap, [ipv4_udp(b) for b in built])
    cmd = [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=/t",
           "-E", "occurrence=f"]
    for f in FIELDS:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert len(rows) == len(pkts), res.stdout

    def num(row, name):
        v = row[FIELDS.index(name)]
        return int(v, 0) if v else None

    for pkt, data, row in zip(pkts, built, rows, strict=True):
        info = OPCODES[pkt.opcode]
        assert num(row, "infiniband.bth.opcode") == pkt.opcode, info.name
        assert num(row, "infiniband.bth.destqp") == pkt.dest_qp
        assert num(row, "infiniband.bth.psn") == pkt.psn
        assert num(row, "infiniband.bth.a") == int(pkt.ackreq)
        assert num(row, "infiniband.bth.se") == int(pkt.se)
        assert num(row, "infiniband.bth.padcnt") == -len(pkt.payload) % 4
        assert num(row, "infiniband.bth.p_key") == pkt.pkey
        if info.transport == Transport.XRC:
            # Wireshark 4.0 names the XRC opcodes (Annex A14: 0xA0 | RC's) but shows what
            # follows the BTH as undissected bytes (some of it): they are the packet's, and
            # start with the XRCETH (Resv8 | XRCSRQ) on every request.
            rest = bytes.fromhex(row[FIELDS.index("infiniband.vendor")])
            assert data[roce.BTH.size:].startswith(rest), info.name
            if info.xrceth:
                assert rest[:4] == pkt.xrc_srqn.to_bytes(4, "big"), info.name
            continue
        if info.reth:
            assert num(row, "infiniband.reth.va") == pkt.reth_va
            assert num(row, "infiniband.reth.r_key") == pkt.reth_rkey
            assert num(row, "infiniband.reth.dmalen") == pkt.reth_len
        if info.atomiceth:   # Wireshark shows the AtomicETH VA/R_Key under the reth fields
            assert num(row, "infiniband.reth.va") == pkt.atomic_va
            assert num(row, "infiniband.reth.r_key") == pkt.atomic_rkey
            assert num(row, "infiniband.atomiceth.swapdt") == pkt.atomic_swap_add
            assert num(row, "infiniband.atomiceth.cmpdt") == pkt.atomic_compare
        if info.aeth:
            assert num(row, "infiniband.aeth.syndrome") == pkt.aeth_syndrome
            assert num(row, "infiniband.aeth.msn") == pkt.aeth_msn
        if info.atomicacketh:
            assert num(row, "infiniband.atomicacketh.origremdt") == pkt.atomic_orig
        if info.deth:
            assert num(row, "infiniband.deth.q_key") == pkt.deth_qkey
            assert num(row, "infiniband.deth.srcqp") == pkt.deth_src_qp
        if info.immdt:
            assert row[FIELDS.index("infiniband.immdt")] == f"{pkt.imm:08x}"
        if info.ieth:
            assert row[FIELDS.index("infiniband.ieth")] == f"{pkt.ieth_rkey:08x}"
        if pkt.payload and row[FIELDS.index("data.data")]:   # payload + pad bytes
            assert bytes.fromhex(row[FIELDS.index("data.data")]) == data[-4 - len(
                pkt.payload) - (-len(pkt.payload) % 4):-4]
        if num(row, "infiniband.invariant.crc") is not None:
            # tshark shows (does not check) the ICRC: the 4 wire bytes read big-endian.
            assert num(row, "infiniband.invariant.crc") == int.from_bytes(data[-4:], "big")


def test_tshark_dissects_the_data_planes_ieth(tshark, tmp_path):
    """SEND with Invalidate as the data plane builds it: tshark finds the IETH's R_Key."""
    from rc_harness import send_with_inv_datagrams

    built = send_with_inv_datagrams(rkey=0x12345678, sizes=(13, 600))
    frames = [ipv4_udp(b, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]), roce.ROCEV2_PORT)
              for b in built]
    pcap = tmp_path / "ieth.pcap"
    write_pcap(pcap, frames)
    res = subprocess.run([tshark, "-n", "-r", str(pcap), "-T", "fields", "-E",
                          "separator=/t", "-E", "occurrence=f", "-e", "infiniband.bth.opcode", "-e",
                          "infiniband.ieth"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert rows == [["23", "12345678"], ["0", ""], ["1", ""], ["22", "12345678"]]

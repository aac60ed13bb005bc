"""CM MADs (rnicd.wire.mad): round trips, hand-computed offsets, untrusted input, and tshark's
InfiniBand CM dissector as an independent decoder."""
import dataclasses
import random
import subprocess

import pytest
from test_wire_tshark import FLOW, ipv4_udp, write_pcap

from rnicd.wire import mad, roce
from rnicd.wire.mad import (
    EXACT,
    INT,
    LAYOUTS,
    MAD_HDR_LEN,
    MAD_LEN,
    AttrID,
    CmDrep,
    CmDreq,
    CmMra,
    CmRej,
    CmRep,
    CmReq,
    CmRtu,
    CmSidrRep,
    CmSidrReq,
    MalformedMAD,
)
from rnicd.wire.opcodes import Opcode

TID = 0x8123456789ABCDEF


def distinctive(cls, seed=0):
    """A message with every field set: top bit set, other bits varying per field."""
    values = {}
    for i, f in enumerate(LAYOUTS[cls][1]):
        if f.kind == INT:
            mask = (1 << f.width) - 1
            values[f.name] = ((1 << (f.width - 1)) | (0x5A3C96F1E2D4B87 * (i + 1 + seed))) & mask
        else:
            values[f.name] = bytes((0x80 | (i * 7 + k + seed)) & 0xFF for k in range(f.nbytes))
    if cls is CmRej:
        values["reject_info_length"] = 72   # 0b1001000: top bit of 7 set, and <= ARI_LEN
    if cls is CmSidrRep:
        values["additional_info_length"] = 72 - seed    # at most SIDR_INFO_LEN
    return cls(**values)


def all_ones(cls, only=None):
    values = {}
    for f in LAYOUTS[cls][1]:
        on = only is None or f.name == only
        if f.kind == INT:
            values[f.name] = (1 << f.width) - 1 if on else 0
        else:
            values[f.name] = (b"\xff" if on else b"\x00") * f.nbytes
    if cls is CmRej and values["reject_info_length"]:
        values["reject_info_length"] = 72
    if cls is CmSidrRep and values["additional_info_length"]:
        values["additional_info_length"] = 72
    return cls(**values)


MSG_CLASSES = list(LAYOUTS)


@pytest.mark.parametrize("cls", MSG_CLASSES, ids=lambda c: c.__name__)
def test_round_trip(cls):
    for seed in range(3):
        msg = distinctive(cls, seed)
        data = mad.pack(msg, TID)
        assert len(data) == MAD_LEN
        hdr, back = mad.unpack(data)
        assert back == msg
        assert hdr == mad.MadHeader(1, 0x07, 2, 0x03, False, 0, 0, TID, LAYOUTS[cls][0], 0)
        assert mad.unpack(bytearray(data))[1] == msg          # any bytes-like input
        assert mad.unpack(memoryview(data))[1] == msg


@pytest.mark.parametrize("cls", MSG_CLASSES, ids=lambda c: c.__name__)
def test_fields_do_not_overlap(cls):
    """Each field set to all ones alone unpacks as exactly that field: no two table entries
    share a bit, and every field keeps its full width."""
    full = mad.unpack(mad.pack(all_ones(cls), 1))[1]
    assert full == all_ones(cls)
    seen = bytearray(MAD_LEN)
    for f in LAYOUTS[cls][1]:
        data = mad.pack(all_ones(cls, only=f.name), 1)
        assert mad.unpack(data)[1] == all_ones(cls, only=f.name), f.name
        body = data[MAD_HDR_LEN:]
        for k, b in enumerate(body):
            assert not (seen[k] & b), f"{cls.__name__}.{f.name} overlaps at byte {k}"
            seen[k] |= b


def test_header_bytes():
    data = mad.pack(CmRtu(1, 2), 0x0102030405060708, attribute_modifier=0xA0B0C0D0)
    assert data[:4] == bytes([1, 0x07, 2, 0x03])            # base, class, class version, Send
    assert data[4:8] == bytes(4)                            # status, class specific
    assert data[8:16] == bytes.fromhex("0102030405060708")  # TransactionID
    assert data[16:18] == b"\x00\x14"                       # AttributeID RTU
    assert data[18:20] == bytes(2)
    assert data[20:24] == bytes.fromhex("a0b0c0d0")


def test_req_offsets_by_hand():
    msg = CmReq(local_comm_id=0xDEADBEEF, service_id=0x0000000001068123, local_qpn=0xABCDEF,
                starting_psn=0x123456, local_qkey=0x80010000, transport_service_type=2,
                end_to_end_flow_control=1, remote_cm_response_timeout=0x1F,
                local_cm_response_timeout=0x10, retry_count=7, path_mtu=5, rnr_retry_count=7,
                max_cm_retries=0xF, srq=1, primary_sl=0xF, primary_hop_limit=64,
                primary_traffic_class=0xB8, primary_flow_label=0xFFFFF, primary_packet_rate=0x3F,
                primary_local_gid=bytes(range(16)), private_data=b"\xaa\xbb")
    d = mad.pack(msg, 7)
    h = MAD_HDR_LEN
    assert d[h + 0:h + 4] == bytes.fromhex("deadbeef")
    assert d[h + 4:h + 8] == bytes(4)                                  # reserved
    assert d[h + 8:h + 16] == bytes.fromhex("0000000001068123")         # ServiceID
    assert d[h + 28:h + 32] == bytes.fromhex("80010000")                # Local Q_Key
    assert d[56:59] == bytes.fromhex("abcdef")                          # Local QPN: MAD 56
    assert d[h + 43] == 0b11111_10_1                                    # timeout | RD | EE
    assert d[h + 44:h + 47] == bytes.fromhex("123456")                  # Starting PSN
    assert d[h + 47] == 0b10000_111                                     # local timeout | retry
    assert d[h + 48:h + 50] == b"\xff\xff"                              # P_Key default
    assert d[h + 50] == 0b0101_0_111                                    # MTU | RDC | RNR retry
    assert d[h + 51] == 0b1111_1_000                                    # max CM retries | SRQ
    assert d[h + 52:h + 56] == b"\xff\xff\xff\xff"                      # permissive LIDs
    assert d[h + 56:h + 72] == bytes(range(16))                         # primary local GID
    assert d[h + 88:h + 92] == bytes.fromhex("fffff03f")  # flow label(20) resv(6) rate(6)
    assert d[h + 92:h + 94] == b"\xb8\x40"                              # TClass, hop limit
    assert d[h + 94] == 0xF0                                            # SL
    assert d[h + 140:h + 142] == b"\xaa\xbb" and d[h + 142:] == bytes(90)


def test_other_messages_offsets_by_hand():
    h = MAD_HDR_LEN
    d = mad.pack(CmRep(1, 2, local_qpn=0xFEDCBA, starting_psn=0x800001, local_qkey=0x11223344,
                       target_ack_delay=0x1F, failover_accepted=0b10, rnr_retry_count=7, srq=1,
                       local_ca_guid=0x8899AABBCCDDEEFF), 1)
    assert d[16:18] == b"\x00\x13"
    assert d[h + 8:h + 12] == bytes.fromhex("11223344")
    assert d[h + 12:h + 15] == bytes.fromhex("fedcba")
    assert d[h + 20:h + 23] == bytes.fromhex("800001")
    assert d[h + 26] == 0b11111_10_0 and d[h + 27] == 0b111_1_0000
    assert d[h + 28:h + 36] == bytes.fromhex("8899aabbccddeeff")

    d = mad.pack(CmRej(0x01020304, 0x05060708, reason=0x801C, message_rejected=2,
                       reject_info_length=72, ari=b"\x99", private_data=b"\x77"), 1)
    assert d[16:18] == b"\x00\x12"
    assert d[h:h + 8] == bytes.fromhex("0102030405060708")
    assert d[h + 8] == 0x80 and d[h + 9] == 72 << 1
    assert d[h + 10:h + 12] == b"\x80\x1c" and d[h + 12] == 0x99 and d[h + 84] == 0x77

    d = mad.pack(CmMra(1, 2, message_mraed=2, service_timeout=0x1F, private_data=b"\x55"), 1)
    assert d[16:18] == b"\x00\x11"
    assert d[h + 8] == 0x80 and d[h + 9] == 0xF8 and d[h + 10] == 0x55

    d = mad.pack(CmDreq(1, 2, remote_qpn=0xC0FFEE, private_data=b"\x66"), 1)
    assert d[16:18] == b"\x00\x15"
    assert d[h + 8:h + 12] == bytes.fromhex("c0ffee00") and d[h + 12] == 0x66

    for cls, attr in ((CmRtu, b"\x00\x14"), (CmDrep, b"\x00\x16")):
        d = mad.pack(cls(0xA1A2A3A4, 0xB1B2B3B4, private_data=b"\x44" * 224), 1)
        assert d[16:18] == attr
        assert d[h:h + 8] == bytes.fromhex("a1a2a3a4b1b2b3b4")
        assert d[h + 8:] == b"\x44" * 224


def test_private_data_sizes_and_padding():
    sizes = {CmReq: 92, CmRep: 196, CmRtu: 224, CmRej: 148, CmMra: 222, CmDreq: 220,
             CmDrep: 224, CmSidrReq: 216, CmSidrRep: 136}
    assert {cls: mad.private_data_len(cls) for cls in MSG_CLASSES} == sizes
    msg = dataclasses.replace(distinctive(CmRep), private_data=b"\x01\x02\x03")
    back = mad.unpack(mad.pack(msg, 1))[1]
    assert back.private_data == b"\x01\x02\x03" + bytes(193)
    with pytest.raises(ValueError, match="private_data"):
        mad.pack(dataclasses.replace(msg, private_data=bytes(197)), 1)


def test_pack_rejects_bad_values():
    good = distinctive(CmReq)
    with pytest.raises(ValueError, match="local_qpn"):
        mad.pack(dataclasses.replace(good, local_qpn=1 << 24), 1)
    with pytest.raises(ValueError, match="primary_sl"):
        mad.pack(dataclasses.replace(good, primary_sl=16), 1)
    with pytest.raises(ValueError):
        mad.pack(dataclasses.replace(good, service_id=-1), 1)
    with pytest.raises(ValueError, match="exactly 16"):
        mad.pack(dataclasses.replace(good, primary_remote_gid=bytes(4)), 1)
    with pytest.raises(ValueError, match="transaction_id"):
        mad.pack(good, 1 << 64)
    with pytest.raises(ValueError, match="reject_info_length"):
        mad.pack(CmRej(1, 2, 28, reject_info_length=73), 1)
    with pytest.raises(ValueError, match="ari"):
        mad.pack(CmRej(1, 2, 28, ari=bytes(73)), 1)
    with pytest.raises(ValueError, match="not a CM message"):
        mad.pack(object(), 1)


def _malformed(data) -> str:
    with pytest.raises(MalformedMAD) as e:
        mad.unpack(data)
    assert e.value.reason in mad.MALFORMED_REASONS
    return e.value.reason


def test_unpack_rejects_bad_headers():
    good = mad.pack(distinctive(CmReq), 1)

    def patched(off, val):
        b = bytearray(good)
        b[off:off + len(val)] = val
        return bytes(b)

    assert _malformed(good[:-1]) == "short"
    assert _malformed(good + b"\x00") == "long"
    assert _malformed(patched(0, b"\x02")) == "bad_base_version"
    assert _malformed(patched(1, b"\x03")) == "bad_class"     # SA class
    assert _malformed(patched(2, b"\x01")) == "bad_class_version"
    assert _malformed(patched(3, b"\x01")) == "bad_method"    # Get
    assert _malformed(patched(3, b"\x83")) == "bad_method"    # R bit set
    assert _malformed(patched(16, b"\x00\x20")) == "unknown_attribute"
    for attr in (AttrID.CLASS_PORT_INFO, AttrID.LAP, AttrID.APR):
        assert _malformed(patched(16, attr.to_bytes(2, "big"))) == "unsupported_attribute"
    rej = bytearray(mad.pack(CmRej(1, 2, 28), 1))
    rej[MAD_HDR_LEN + 9] = 73 << 1
    assert _malformed(rej) == "bad_reject_info_length"
    rep = bytearray(mad.pack(CmSidrRep(1, 0, 2), 1))
    rep[MAD_HDR_LEN + 5] = 73
    assert _malformed(rep) == "bad_additional_info_length"
    with pytest.raises(ValueError, match="additional_info_length"):
        mad.pack(CmSidrRep(1, 0, 2, additional_info_length=73), 1)


def test_sidr_offsets_by_hand():
    """IBTA 12.6 tables 119 (SIDR_REQ) and 120 (SIDR_REP), byte by byte."""
    h = MAD_HDR_LEN
    d = mad.pack(CmSidrReq(request_id=0xDEADBEEF, service_id=0x0000000001111D2F,
                           partition_key=0xFFFF, private_data=b"\x00\x40ab"), 9)
    assert d[16:18] == b"\x00\x17"                                     # AttributeID SIDR_REQ
    assert d[h + 0:h + 4] == bytes.fromhex("deadbeef")                  # Request ID
    assert d[h + 4:h + 6] == b"\xff\xff"                                # Partition Key
    assert d[h + 6:h + 8] == bytes(2)                                   # reserved
    assert d[h + 8:h + 16] == bytes.fromhex("0000000001111d2f")         # ServiceID
    assert d[h + 16:h + 20] == b"\x00\x40ab"                            # Private Data: 216 B
    assert len(d[h + 16:]) == mad.private_data_len(CmSidrReq) == 216
    d = mad.pack(CmSidrRep(request_id=0xDEADBEEF, status=mad.SidrStatus.REJECTED,
                           service_id=0x0000000001111D2F, qpn=0xABCDEF, qkey=0x01234567,
                           additional_info_length=2, additional_info=b"\x11\x22",
                           private_data=b"pd"), 9)
    assert d[16:18] == b"\x00\x18"                                     # AttributeID SIDR_REP
    assert d[h + 0:h + 4] == bytes.fromhex("deadbeef")                  # Request ID
    assert d[h + 4] == 2 and d[h + 5] == 2                              # Status, info length
    assert d[h + 6:h + 8] == bytes(2)                                   # reserved
    assert d[h + 8:h + 12] == bytes.fromhex("abcdef00")                 # QPN (24) + reserved
    assert d[h + 12:h + 20] == bytes.fromhex("0000000001111d2f")        # ServiceID
    assert d[h + 20:h + 24] == bytes.fromhex("01234567")                # Q_Key
    assert d[h + 24:h + 26] == b"\x11\x22"                              # Additional Info: 72 B
    assert d[h + 96:h + 98] == b"pd"                                    # Private Data: 136 B
    assert len(d[h + 96:]) == mad.private_data_len(CmSidrRep) == 136


def test_truncated_inputs():
    for cls in MSG_CLASSES:
        data = mad.pack(distinctive(cls), 1)
        for n in range(MAD_LEN):
            assert _malformed(data[:n]) == "short"


def test_random_inputs_raise_only_malformed():
    rng = random.Random(0xC0FFEE)
    ok = 0
    for i in range(4000):
        n = rng.choice((0, 1, 23, 24, 100, 255, 256, 256, 256, 257, 300))
        data = bytearray(rng.getrandbits(8) for _ in range(n))
        if n >= 24 and i % 2:        # mostly-valid header, random attribute and body
            data[0:4] = bytes([1, 7, 2, 3])
            data[16:18] = rng.choice([a.to_bytes(2, "big") for a in AttrID] + [b"\xff\xff"])
        try:
            hdr, msg = mad.unpack(bytes(data))
        except MalformedMAD as e:
            assert e.reason in mad.MALFORMED_REASONS
            continue
        ok += 1
        assert type(msg) in LAYOUTS and hdr.attribute_id == LAYOUTS[type(msg)][0]
        # what we accept we can re-encode; reserved bits are the only difference allowed
        assert mad.unpack(mad.pack(msg, hdr.transaction_id))[1] == msg
    assert ok > 100


def test_exact_and_padded_fields_are_byte_strings():
    for cls in MSG_CLASSES:
        for f in LAYOUTS[cls][1]:
            if f.kind != INT:
                assert f.bit == 0 and f.width % 8 == 0
            if f.kind == EXACT:
                assert f.nbytes == 16   # GIDs


# ---- tshark --------------------------------------------------------------------------------
GID_SRC = bytes(10) + b"\xff\xff" + FLOW["src_ip"]   # IPv4-mapped GIDs, as RoCEv2 uses
GID_DST = bytes(10) + b"\xff\xff" + FLOW["dst_ip"]
TSHARK_MSGS = [
    ("ConnectRequest", CmReq(
        local_comm_id=0x89ABCDEF, service_id=0x0000000001068123, local_qpn=0xABCDEF,
        starting_psn=0xFEDCBA, local_ca_guid=0x8899AABBCCDDEEFF, local_qkey=0x80000001,
        responder_resources=0x80, initiator_depth=0x81, path_mtu=5, retry_count=7,
        rnr_retry_count=7, max_cm_retries=15, primary_local_gid=GID_SRC,
        primary_remote_gid=GID_DST, primary_traffic_class=0x88, primary_hop_limit=0xFF,
        primary_sl=0xF, private_data=b"\x00\x40" + bytes(10)),
     {"infiniband.cm.req": 0x89ABCDEF, "infiniband.cm.req.localqpn": 0xABCDEF,
      "infiniband.cm.req.serviceid": 0x0000000001068123,
      "infiniband.cm.req.localcaguid": 0x8899AABBCCDDEEFF,
      "infiniband.cm.req.startpsn": 0xFEDCBA, "infiniband.cm.req.localqkey": 0x80000001,
      "infiniband.cm.req.responderres": 0x80, "infiniband.cm.req.initdepth": 0x81,
      "infiniband.cm.req.pppmtu": 5, "infiniband.cm.req.rnrretrcount": 7,
      "infiniband.cm.req.maxcmretr": 15, "infiniband.cm.req.prim_tfcclass": 0x88,
      "infiniband.cm.req.prim_hoplim": 0xFF, "infiniband.cm.req.prim_sl": 0xF,
      "infiniband.cm.req.prim_localgid_ipv4": "192.0.2.1",
      "infiniband.cm.req.prim_remotegid_ipv4": "198.51.100.7"}),
    ("ConnectReply", CmRep(
        local_comm_id=0x80112233, remote_comm_id=0x89ABCDEF, local_qpn=0x800002,
        starting_psn=0xC00003, local_qkey=0x80000002, target_ack_delay=0x1F, srq=1,
        rnr_retry_count=7, local_ca_guid=0xF0E1D2C3B4A59687),
     {"infiniband.cm.rep": 0x80112233, "infiniband.cm.rep.remotecommid": 0x89ABCDEF,
      "infiniband.cm.rep.localqpn": 0x800002, "infiniband.cm.rep.startpsn": 0xC00003,
      "infiniband.cm.rep.localqkey": 0x80000002, "infiniband.cm.rep.tgtackdelay": 0x1F,
      "infiniband.cm.rep.srq": 1, "infiniband.cm.rep.rnrretrcount": 7,
      "infiniband.cm.rep.localcaguid": 0xF0E1D2C3B4A59687}),
    ("ReadyToUse", CmRtu(0x89ABCDEF, 0x80112233),
     {"infiniband.cm.rtu.localcommid": 0x89ABCDEF,
      "infiniband.cm.rtu.remotecommid": 0x80112233}),
    ("ConnectReject", CmRej(0x80112233, 0x89ABCDEF, reason=28, message_rejected=1),
     {"infiniband.cm.rej.localcommid": 0x80112233,
      "infiniband.cm.rej.remotecommid": 0x89ABCDEF, "infiniband.cm.rej.reason": 28,
      "infiniband.cm.rej.msgrej": 1}),
    ("MsgRcptAck", CmMra(0x80112233, 0x89ABCDEF, service_timeout=0x1F), {}),
    ("DisconnectRequest", CmDreq(0x89ABCDEF, 0x80112233, remote_qpn=0x800002),
     {"infiniband.cm.dreq.localcommid": 0x89ABCDEF,
      "infiniband.cm.dreq.remotecommid": 0x80112233,
      "infiniband.cm.req.remoteqpneecn": 0x800002}),
    ("DisconnectReply", CmDrep(0x80112233, 0x89ABCDEF),
     {"infiniband.cm.drsp.localcommid": 0x80112233,
      "infiniband.cm.drsp.remotecommid": 0x89ABCDEF}),
    # tshark 4.0 names SIDR MADs but has no field dissector for them ("Dissector Not
    # Implemented"): the payload it shows is checked at the IBTA offsets (table 119/120)
    ("ServiceIDResReq", CmSidrReq(0x89ABCDEF, 0x0000000001111D2F, private_data=b"\x00\x40"),
     {"data": {0: "89abcdef", 4: "ffff", 8: "0000000001111d2f", 16: "0040"}}),
    ("ServiceIDResReqResp", CmSidrRep(0x89ABCDEF, 0, 0x0000000001111D2F, qpn=0xABCDEF,
                                      qkey=0x01234567, private_data=b"ok"),
     {"data": {0: "89abcdef", 4: "00", 8: "abcdef00", 12: "0000000001111d2f",
               20: "01234567", 96: "6f6b"}}),
]


def test_tshark_dissects_our_cm_mads(tshark, tmp_path):
    frames = []
    for i, (_name, msg, _want) in enumerate(TSHARK_MSGS):
        # Annex A17 / 13.5.1: a CM MAD is a UD SEND to QP1 with the GSI Q_Key, from QP1.
        pkt = roce.Packet(opcode=Opcode.UD_SEND_ONLY, dest_qp=mad.GSI_QPN, psn=i,
                          deth_qkey=mad.GSI_QKEY, deth_src_qp=mad.GSI_QPN)
        frames.append(ipv4_udp(roce.build(pkt, mad.pack(msg, TID + i), **FLOW)))
    pcap = tmp_path / "cm.pcap"
    write_pcap(pcap, frames)
    names = sorted({k for _n, _m, want in TSHARK_MSGS for k in want if k != "data"})
    cols = ["_ws.col.Info", "infiniband.mad.method", "infiniband.mad.attributeid",
            "infiniband.mad.transactionid", "infiniband.deth.q_key",
            "infiniband.mad.data"] + names
    cmd = [tshark, "-n", "-r", str(pcap), "-d", f"udp.port=={roce.ROCEV2_PORT},infiniband",
           "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    for c in cols:
        cmd += ["-e", c]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert len(rows) == len(TSHARK_MSGS), res.stdout
    print()
    for i, ((name, msg, want), row) in enumerate(zip(TSHARK_MSGS, rows, strict=True)):
        got = dict(zip(cols, row, strict=True))
        print(" | ".join(v for v in row if v))
        assert got["_ws.col.Info"] == f"CM: {name}"
        assert int(got["infiniband.mad.attributeid"], 0) == LAYOUTS[type(msg)][0]
        assert int(got["infiniband.mad.method"], 0) == mad.METHOD_SEND
        assert int(got["infiniband.mad.transactionid"], 0) == TID + i
        assert int(got["infiniband.deth.q_key"], 0) == mad.GSI_QKEY
        data = bytes.fromhex(got["infiniband.mad.data"].replace(":", ""))
        assert data == mad.pack(msg, TID + i)[MAD_HDR_LEN:]        # the CM data, byte-exact
        for field, value in want.items():
            if field == "data":
                for off, hexbytes in value.items():
                    assert data[off:off + len(hexbytes) // 2].hex() == hexbytes, (name, off)
            elif isinstance(value, str):
                assert got[field] == value, field
            else:
                assert int(got[field], 0) == value, field

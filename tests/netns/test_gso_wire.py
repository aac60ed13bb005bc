"""UDP GSO as a wire sees it: an engine hands the kernel a run of equal-size datagrams as one
send, and where the link cannot segment in hardware the kernel does, numbering the segments'
IPv4 Identification 0, 1, ... The RoCEv2 ICRC covers that field, so each segment must carry
the ICRC of its own ID: scapy (an independent ICRC) checks every captured packet against its
real IP header, and the receiving daemon, which cannot see that header, must accept them."""
import os
import shutil
import subprocess
import sys
import time

import pytest


def test_gso_segments_verify_against_their_real_ip_ids(hosts, tmp_path):
    for tool in ("tshark", "ethtool"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} not installed")
            pytest.skip(f"{tool} not installed")
    try:
        from scapy.contrib.roce import BTH
        from scapy.layers.inet import IP, UDP
        from scapy.utils import rdpcap
    except ImportError as exc:
        pytest.skip(f"scapy.contrib.roce not importable: {exc}")
    sender, receiver = hosts(2)
    # the sender's link segments in software: the packets on the wire are the segments
    sender.run("ethtool", "-K", "eth0", "tx-udp-segmentation", "off", check=True,
               capture_output=True)
    pcap = tmp_path / "gso.pcap"
    cap = receiver.popen("tshark", "-i", "eth0", "-f", f"udp port 4791 and src {sender.ip}",
                         "-w", str(pcap), "-q", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        srv = receiver.popen(sys.executable, "-m", "rnic.tool", "--socket", receiver.socket,
                             "perf", "write_bw", "-p", "18700", stdout=open(os.devnull, "w"))
        r = sender.run(sys.executable, "-m", "rnic.tool", "--socket", sender.socket, "perf",
                       "write_bw", receiver.ip, "-p", "18700", "-s", "65536", "-n", "200",
                       capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert srv.wait(30) == 0
        time.sleep(1.0)
    finally:
        cap.terminate()
        cap.wait(10)
    data = [p for p in rdpcap(str(pcap)) if UDP in p and p[UDP].dport == 4791]
    assert len(data) >= 200 * 16                    # 64 KiB at MTU 4096: 16 packets each
    ids = set()
    for p in data:
        ip = p[IP]
        roce = IP(bytes(ip))                        # scapy recomputes the ICRC from it
        wire = bytes(ip[UDP].payload)[-4:]
        assert BTH in roce
        roce[BTH].icrc = None
        assert bytes(roce[UDP].payload)[-4:] == wire, f"ICRC of IP ID {ip.id} does not verify"
        ids.add(ip.id)
    assert max(ids) > 1, f"no GSO run was segmented (IP IDs {sorted(ids)[:8]})"
    stat = receiver.run(sys.executable, "-m", "rnic.tool", "--socket", receiver.socket, "stat",
                        capture_output=True, text=True, timeout=30).stdout
    assert "icrc_err" not in stat, stat

"""The `rnic` and `rnicd` commands as a user runs them."""
import json
import subprocess
import sys

import pytest


def rnic(daemon, *args, check=True):
    return subprocess.run([sys.executable, "-m", "rnic.tool", "--socket", daemon.socket, *args],
                          capture_output=True, text=True, check=check, timeout=30)


def test_devinfo_like_ibv_devinfo(rnicd):
    d = rnicd("a")
    out = rnic(d, "devinfo", "-v").stdout
    assert "hca_id:\trnic0" in out
    assert "PORT_ACTIVE (4)" in out and "link_layer:\t\tEthernet" in out
    a, b, c, e = (int(x) for x in d.ip.split("."))
    gid = f"0000:0000:0000:0000:0000:ffff:{a:02x}{b:02x}:{c:02x}{e:02x}"
    assert f"GID[  0]:\t\t{gid}, RoCE v2" in out
    assert "max_qp_wr:" in out


def test_fault_set_show_and_stat(rnicd):
    d = rnicd("a")
    out = rnic(d, "fault", "drop=0.25,seed=3").stdout
    assert "drop=0.25" in out and "seed=3" in out
    assert "drop=0.25" in rnic(d, "fault").stdout
    assert "drop=0.0" in rnic(d, "fault", "off").stdout
    bad = rnic(d, "fault", "drop=2", check=False)
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr
    out = rnic(d, "stat").stdout
    assert "objects: contexts=1" in out


def test_no_daemon_gives_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rnic.tool", "--socket",
                        str(tmp_path / "none.sock"), "devinfo"], capture_output=True, text=True)
    assert r.returncode == 1 and "cannot reach rnicd" in r.stderr


@pytest.mark.parametrize("flag", ["--fault=drop=3", "--port=notanumber"])
def test_rnicd_rejects_bad_flags(flag):
    r = subprocess.run([sys.executable, "-m", "rnicd.cli", flag], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and r.stderr


def test_embedded_default_config_serves_rnic0_on_loopback(tmp_path):
    """What `make run` starts: no flags, device rnic0 on 127.0.0.1:4791, socket $RNIC_SOCKET."""
    import os
    import socket as so
    import time
    probe = so.socket(so.AF_INET, so.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", 4791))
    except OSError:
        pytest.skip("127.0.0.1:4791 is in use (a daemon from `make run`?)")
    finally:
        probe.close()
    env = dict(os.environ, RNIC_SOCKET=str(tmp_path / "default.sock"))
    proc = subprocess.Popen([sys.executable, "-m", "rnicd.cli"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(env["RNIC_SOCKET"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        out = subprocess.run([sys.executable, "-m", "rnic.tool", "devinfo"], env=env,
                             capture_output=True, text=True, timeout=30).stdout
        assert "hca_id:\trnic0" in out
        assert "0000:0000:0000:0000:0000:ffff:7f00:0001, RoCE v2" in out
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_qp_table(two_daemons):
    import rnic.enums as e
    from rc_pair import Side, connect
    da, db = two_daemons
    a, b = Side(da), Side(db)
    connect(a, b, psn=(0x111, 0x222))
    out = rnic(da, "qp").stdout.splitlines()
    assert out[0].split() == ["QPN", "type", "state", "sq_psn", "una", "rq_psn", "peer", "pid",
                              "cwnd", "srtt_us"]
    row = next(line.split() for line in out[1:] if int(line.split()[0]) == a.qp.qp_num)
    assert row[1:7] == ["RC", "RTS", "0x111", "0x111", "0x222", f"{db.ip}/{b.qp.qp_num}"]
    rows = json.loads(rnic(da, "qp", "--json").stdout)
    assert [(r["state"], r["cwnd"], r["srtt_us"]) for r in rows if r["qp_num"] == a.qp.qp_num
            ] == [(e.IBV_QPS_RTS, 128.0, 0.0)]     # a full window, no round trip sampled yet
    a.close()
    b.close()

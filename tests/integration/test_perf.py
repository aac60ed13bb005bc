"""`rnic perf`: output format, JSON schema, the client/server handshake, bad arguments.
No timing is asserted: speed is measured by `make bench`, never by tests."""
import json
import socket
import subprocess
import sys

import pytest

BW_KEYS = {"test", "bytes", "iterations", "bw_peak_MBps", "bw_avg_MBps", "msg_rate_Mpps"}
LAT_KEYS = {"test", "bytes", "iterations", "t_min_us", "t_max_us", "t_typical_us", "t_avg_us",
            "t_stdev_us", "p99_us", "p999_us"}


def perf(daemon, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "rnic.tool", "--socket", daemon.socket,
                           "perf", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("test,extra", [
    ("write_bw", ["-s", "4096", "-n", "200"]), ("read_bw", ["-s", "8192", "-n", "100"]),
    ("send_bw", ["-s", "1024", "-n", "200", "-q", "2"]), ("atomic_bw", ["-n", "100"]),
    ("write_lat", ["-s", "64", "-n", "50"]), ("send_lat", ["-s", "64", "-n", "50"]),
    ("read_lat", ["-s", "64", "-n", "50"]), ("atomic_lat", ["-n", "50"])])
def test_local_json_schema(two_daemons, test, extra):
    da, db = two_daemons
    r = perf(da, test, "--local", "--server-socket", db.socket, "--json", *extra)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == (BW_KEYS if test.endswith("_bw") else LAT_KEYS)
    assert row["test"] == test and row["iterations"] > 0
    assert row["bytes"] == (8 if test.startswith("atomic") else int(extra[1]))
    if test.endswith("_bw"):
        assert row["bw_peak_MBps"] >= row["bw_avg_MBps"] > 0 and row["msg_rate_Mpps"] > 0
    else:
        assert 0 < row["t_min_us"] <= row["t_typical_us"] <= row["p99_us"] <= row["t_max_us"]


def test_text_output_has_perftest_columns_and_all_sizes(two_daemons, tmp_path):
    da, db = two_daemons
    r = perf(da, "write_bw", "--local", "--server-socket", db.socket, "-a", "-n", "20")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(" #bytes"))
    assert lines[head].split() == ["#bytes", "#iterations", "BW", "peak[MB/sec]", "BW",
                                   "average[MB/sec]", "MsgRate[Mpps]"]
    rows = [line.split() for line in lines[head + 1:] if line.strip() and line[1].isdigit()]
    assert [int(r[0]) for r in rows] == [2 << i for i in range(23)]
    samples = tmp_path / "lat.txt"
    r = perf(da, "send_lat", "--local", "--server-socket", db.socket, "-n", "30",
             "--samples", str(samples))
    assert r.returncode == 0, r.stderr
    assert "t_typical[usec]" in r.stdout and "99.9% percentile[usec]" in r.stdout
    assert len(samples.read_text().split()) == 30


def test_device_option_names_the_device(two_daemons):
    da, db = two_daemons
    ok = perf(da, "write_bw", "--local", "--server-socket", db.socket, "-d", "rnic0", "-n", "10",
              "--json")
    assert ok.returncode == 0, ok.stderr
    bad = perf(da, "write_bw", "--local", "--server-socket", db.socket, "-d", "mlx5_0",
               "-n", "10")
    assert bad.returncode == 1 and "no device 'mlx5_0'" in bad.stderr


@pytest.mark.parametrize("test,client_args", [
    ("send_bw", ["HOST", "-p", "PORT", "-s", "2048", "-n", "300", "--json"]),
    # perftest's habit: the server's host last (`ib_write_bw -s 65536 HOST`)
    ("write_bw", ["-p", "PORT", "-s", "65536", "-n", "3000", "--json", "HOST"])])
def test_client_server_over_tcp(two_daemons, test, client_args):
    """Two invocations, as perftest is used: a server waiting, a client naming its host
    (the server daemon's address) before or after the options."""
    da, db = two_daemons
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rnic.tool", "--socket", db.socket,
                               "perf", test, "-p", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        args = [{"HOST": db.ip, "PORT": str(port)}.get(a, a) for a in client_args]
        r = perf(da, test, *args)
        assert r.returncode == 0, r.stderr
        row = json.loads(r.stdout)
        assert row["test"] == test and row["iterations"] == int(args[args.index("-n") + 1])
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.parametrize("args,message", [
    (["write_bw", "--local", "-s", "0"], "not a positive number"),
    (["write_lat", "--local", "-q", "4"], "latency tests use one QP"),
    (["write_bw", "--local", "-l", "64", "-t", "16"], "exceeds --tx-depth"),
    (["write_bw", "--local", "-a", "-s", "64"], "exclude each other"),
    (["write_bw", "--local", "-I", "4096"], "inline-size"),
    (["write_bw", "--local", "-m", "1500"], "invalid choice"),
    (["nosuch_bw"], "invalid choice"),
])
def test_bad_arguments(rnicd, args, message):
    d = rnicd("a")
    r = perf(d, *args, timeout=30)
    assert r.returncode == 2 and message in r.stderr


def test_unreachable_server_is_a_clear_error(rnicd):
    d = rnicd("a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                 # nobody listens here
    r = perf(d, "write_bw", "127.0.0.1", "-p", str(port), "-n", "10", timeout=60)
    assert r.returncode == 1 and "cannot reach the perf server" in r.stderr

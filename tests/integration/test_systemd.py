"""rnicd as a systemd service: a test plays systemd's part (socket activation with
LISTEN_FDS, NOTIFY_SOCKET, WATCHDOG_USEC); `make install DESTDIR=...` lays out every file and
what it installed runs; the units pass `systemd-analyze verify` where it is available."""
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# exec rnicd with the listening socket at fd 3 and LISTEN_PID naming rnicd itself, as
# systemd does (the pid survives exec)
LAUNCH = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
          "os.environ['LISTEN_PID'] = str(os.getpid()); "
          "os.execv(sys.executable, [sys.executable, '-m', 'rnicd.cli'] + sys.argv[2:])")


def test_socket_activation_ready_watchdog_stopping(tmp_path):
    ctl_path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(ctl_path)
    listener.listen(16)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    env = dict(os.environ, LISTEN_FDS="1", NOTIFY_SOCKET=str(tmp_path / "notify"),
               WATCHDOG_USEC="200000")
    fd = listener.fileno()
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(fd), "--bind", "127.0.251.1",
                             "--ctl-socket", str(tmp_path / "unused.sock")],
                            env=env, pass_fds=(fd,), stderr=subprocess.PIPE, text=True)
    listener.close()                       # the daemon owns it now
    try:
        messages = []
        deadline = time.monotonic() + 20
        while not any("WATCHDOG=1" in m for m in messages) and time.monotonic() < deadline:
            messages.append(notify.recv(4096).decode())
        assert "READY=1" in messages[0]
        assert any("WATCHDOG=1" in m for m in messages)
        assert not os.path.exists(tmp_path / "unused.sock")   # it used systemd's socket
        from rnic.device import Context
        with Context(socket=ctl_path) as ctx:                # verbs over the passed socket
            assert ctx.query_device().name == "rnic0"
        proc.terminate()
        while True:
            m = notify.recv(4096).decode()
            if "STOPPING=1" in m:
                break
        assert proc.wait(10) == 0
        assert os.path.exists(ctl_path)          # systemd's socket file is not ours to remove
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()


def _clean_env(**extra):
    """The environment of a user outside this tree: no PYTHONPATH pointing into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | extra


@pytest.mark.slow
def test_make_install_lays_out_every_file_and_what_it_installed_runs(tmp_path, source_tree):
    dest = tmp_path / "root"
    r = subprocess.run(["make", "-C", str(source_tree), "install", f"DESTDIR={dest}",
                        "PREFIX=/usr", f"PYTHON={sys.executable}"], env=_clean_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink()}
    for f in ("usr/bin/rnicd", "usr/bin/rnic", "usr/lib/systemd/system/rnicd.service",
              "usr/lib/systemd/system/rnicd.socket", "usr/lib/sysusers.d/rnicd.conf",
              "etc/rnicd/rnicd.toml", "usr/lib/rnicd/bin/python", "usr/lib/rnicd/bin/rnicd"):
        assert f in files, f"{f} not installed; have {sorted(files)[:20]}..."
    assert any(f.startswith("usr/lib/rnicd/lib/python3") and "rnicd/_native" in f for f in files)
    assert any(f.startswith("usr/lib/rnicd/lib/python3") and f.endswith("rnic/perf/run.py")
               for f in files)
    # the commands link into the service's venv, at the path where it will live
    for cmd in ("rnicd", "rnic"):
        assert os.readlink(dest / "usr/bin" / cmd) == f"/usr/lib/rnicd/bin/{cmd}"
        first = (dest / "usr/lib/rnicd/bin" / cmd).read_text().splitlines()[0]
        assert first == "#!/usr/lib/rnicd/bin/python", first
    assert str(dest) not in (dest / "usr/lib/rnicd/pyvenv.cfg").read_text()
    unit = (dest / "usr/lib/systemd/system/rnicd.service").read_text()
    assert "ExecStart=/usr/bin/rnicd " in unit and "@BINDIR@" not in unit
    # What it installed imports and runs, from outside the tree and on its own packages (the
    # venv works from DESTDIR too: it finds itself from the path it is started by).
    py = dest / "usr/lib/rnicd/bin/python"
    code = ("import rnicd, rnicd.core.cm, rnicd.daemon, rnicd._native, rnic.tool, rnic.ping, "
            "rnic.perf; print(rnicd.__file__)")
    r = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=_clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(dest / "usr/lib/rnicd/lib")), r.stdout
    for module in ("rnicd.cli", "rnic.tool"):
        r = subprocess.run([str(py), "-m", module, "--help"], cwd=tmp_path, env=_clean_env(),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    # systemd-analyze checks that ExecStart exists, and --root=DESTDIR lacks systemd's own
    # units: verify the units as rendered for the rnicd beside this test's Python.
    analyze = shutil.which("systemd-analyze")
    rnicd_bin = os.path.join(sysconfig.get_path("scripts"), "rnicd")
    if not analyze or not os.path.exists(rnicd_bin):
        print("systemd-analyze or an installed rnicd missing: units not verified")
        return
    rendered = tmp_path / "units"
    rendered.mkdir()
    (rendered / "rnicd.service").write_text(
        open(os.path.join(ROOT, "systemd", "rnicd.service")).read().replace(
            "@BINDIR@", os.path.dirname(rnicd_bin)))
    shutil.copy(os.path.join(ROOT, "systemd", "rnicd.socket"), rendered / "rnicd.socket")
    r = subprocess.run([analyze, "verify", str(rendered / "rnicd.socket"),
                        str(rendered / "rnicd.service")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        r.stdout + r.stderr

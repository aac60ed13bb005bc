"""The package as a user installs it: a wheel built from the sources, `pip install`ed into a
fresh virtualenv, serves from outside the tree (every subpackage shipped, no import from here)."""
import os
import subprocess
import sys

import pytest
from conftest import next_address
from daemon_ready import wait_ready


def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r


def _clib_buildable() -> bool:
    """Can the wheel build clients/c (rdma-core's headers, msgpack-c) and is ibv_devices
    there to try it?"""
    return all(os.path.exists(p) for p in ("/usr/include/infiniband/verbs.h",
                                           "/usr/include/msgpack.h", "/usr/bin/ibv_devices"))


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_serves_devinfo(tmp_path, source_tree):
    # a user's environment: no PYTHONPATH into this tree (pip would take its rnicd.egg-info
    # for an installed rnicd)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--no-deps", "-w", wheels, source_tree], env=env)
    (wheel,) = wheels.glob("rnicd-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], env=env)
    _run([venv / "bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          wheel], env=env)
    where = _run([venv / "bin/python", "-c", "import rnicd, rnic; print(rnicd.__file__); "
                  "print(rnic.__file__)"], cwd=tmp_path, env=env).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where
    ip, sock = next_address(), tmp_path / "ctl.sock"
    with open(tmp_path / "rnicd.log", "w") as log:
        daemon = subprocess.Popen([venv / "bin/rnicd", "--bind", ip, "--ctl-socket", sock],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(daemon, str(sock), str(tmp_path / "rnicd.log"))
        out = _run([venv / "bin/rnic", "--socket", sock, "devinfo"], cwd=tmp_path,
                   env=env).stdout
        assert "hca_id:\trnic0" in out and "PORT_ACTIVE" in out, out
        if _clib_buildable():     # the wheel ships rnicd's libibverbs: `rnic exec` uses it
            libdir = _run([venv / "bin/rnic", "libdir"], cwd=tmp_path, env=env).stdout.strip()
            assert libdir.startswith(str(venv)), libdir
            assert os.path.exists(os.path.join(libdir, "libibverbs.so.1")), libdir
            out = _run([venv / "bin/rnic", "exec", "--socket", sock, "--", "ibv_devices"],
                       cwd=tmp_path, env=env).stdout
            assert "rnic0" in out, out
    finally:
        daemon.terminate()
        assert daemon.wait(20) == 0, (tmp_path / "rnicd.log").read_text()

"""Run rdma-core's own pyverbs test suite (Debian 12's python3-pyverbs, rdma-core 44.0),
unmodified, against ``rnic`` and rnicd, and print per-file pass/fail/error/skip totals.

    python tests/pyverbs_suite/run_suite.py [--files core|generic|all|test_pd,...] [--json]
                                            [--real-pyverbs]

What it does, per test file (one fresh rnicd per file, files one after another):

1. Needs /usr/share/doc/rdma-core/tests and the real pyverbs (package python3-pyverbs): when
   missing it runs ``apt-get install -y python3-pyverbs`` if it is root and apt-get exists,
   else it says what to install and exits with status 3.
2. Copies the suite's framework (every non-``test_*`` file: run_tests.py, args_parser.py,
   __init__.py, base.py, utils.py, base_rdmacm.py, rdmacm_utils.py, the vendor *_base.py...),
   that test file and the test files it imports (test_shared_pd imports test_qpex) into a
   private directory and gunzips the ``*.gz`` files. A directory per file because rdma-core's
   ``tests/__init__.py`` imports every ``test_*.py`` beside it, and the vendor files (mlx5,
   efa, cuda), which need vendor hardware, are not run; the runner is given the file's name,
   so only that file's tests run.
3. Starts rnicd (``python -m rnicd.cli --bind ... --ctl-socket ...``) and runs rdma-core's own
   runner with this interpreter: ``run_tests.py --dev rnic0 --port 1 --gid 0 -v tests.test_X``.

With ``--real-pyverbs`` step 3 runs the suite on Debian's own pyverbs instead of on rnic:
``rnic exec --socket S -- /usr/bin/python3 run_tests.py ...``, so pyverbs (compiled against
libibverbs) loads rnicd's C libraries (clients/c, built by ``make clib``; exit status 3 when
they are missing) and no shim or enum table is involved. Its ratchet is floor-real.json.

The plumbing adapters of the default mode, and nothing else (no test is edited, deselected
or patched):

- Module mapping: ``shim/sitecustomize.py`` (first on PYTHONPATH) maps ``pyverbs`` /
  ``pyverbs.X`` to ``rnic`` / ``rnic.X``; ``pyverbs.enums``, ``pyverbs.cm_enums`` and the
  providers' ``*_enums`` are rnic's module plus the real pyverbs' value for each name rnic
  lacks (dumped once from Debian's pyverbs with /usr/bin/python3 into ``enums.json``).
- Device, port, GID: the runner's own options ``--dev rnic0 --port 1 --gid 0``;
  RNIC_SOCKET names the file's daemon.
- The netdev lookup: rdma-core 44's base.py finds a device's netdev by listing
  ``/sys/class/infiniband/<dev>/device/net/`` and takes its first address from
  ``ip -j addr show``. Each file runs in a private network and mount namespace
  (``unshare --net --mount --propagation private``, needs root or user namespaces): there
  ``lo`` is brought up, rnicd binds 127.0.0.1 (lo's first address), a tmpfs is mounted on
  /sys/class with the real /sys/class entries bind-mounted back into it, plus the one directory
  ``infiniband/rnic0/device/net/lo``: rnic0's netdev is lo, as it is. Where unshare fails, the
  file runs without it (rnicd on a 127.x.y.z address) and the reason is printed; base.py then
  finds no netdev and uses no IP address.

Exit status: 0 when every file ran (whatever its results), 1 when a file could not run,
3 when python3-pyverbs is missing and cannot be installed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SUITE = "/usr/share/doc/rdma-core/tests"
REAL_PYVERBS = "/usr/lib/python3/dist-packages/pyverbs"
SYSTEM_PYTHON = "/usr/bin/python3"

CORE = ["test_device", "test_pd", "test_mr", "test_cq", "test_cq_events", "test_qp",
        "test_qpex", "test_addr", "test_atomic", "test_rdmacm", "test_cqex"]
GENERIC = ["test_flow", "test_fork", "test_odp", "test_parent_domain",
           "test_relaxed_ordering", "test_rss_traffic", "test_shared_pd", "test_tag_matching"]
ENUM_MODULES = ["pyverbs.enums", "pyverbs.cm_enums", "pyverbs.providers.mlx5.mlx5_enums",
                "pyverbs.providers.efa.efa_enums"]
FILE_TIMEOUT = 900.0


class Missing(Exception):
    """python3-pyverbs is not installed and cannot be installed here."""


def ensure_pyverbs(log=print) -> None:
    if os.path.isdir(SUITE) and os.path.isdir(REAL_PYVERBS):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("python3-pyverbs missing: apt-get install -y python3-pyverbs")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-q", "python3-pyverbs"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:   # maybe the package lists were never fetched
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            r = subprocess.run(["apt-get", "install", "-y", "-q", "python3-pyverbs"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if os.path.isdir(SUITE) and os.path.isdir(REAL_PYVERBS):
            return
        raise Missing("apt-get install -y python3-pyverbs failed:\n" + r.stdout[-1500:])
    raise Missing("rdma-core's test suite needs Debian's python3-pyverbs (rdma-core 44.0): "
                  "run `apt-get install -y python3-pyverbs` as root")


def dump_enums(path: str) -> None:
    """The real pyverbs' enumeration values, read by Debian's own interpreter."""
    code = r"""
import enum, importlib, json, sys
out = {}
for name in sys.argv[2:]:
    m = importlib.import_module(name)
    flat, classes, member_of = {}, {}, {}
    for k in dir(m):
        if k.startswith("__"):
            continue
        v = getattr(m, k)
        if isinstance(v, type) and issubclass(v, enum.Enum):
            classes[k] = {n: int(x) for n, x in v.__members__.items()}
            for n in v.__members__:
                member_of.setdefault(n, k)
        elif isinstance(v, int):
            flat[k] = int(v)
    out[name] = {"flat": flat, "classes": classes, "member_of": member_of}
json.dump(out, open(sys.argv[1], "w"), indent=0, sort_keys=True)
"""
    subprocess.run([SYSTEM_PYTHON, "-c", code, path, *ENUM_MODULES], check=True,
                   cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


_IMPORTS_TEST = re.compile(r"^\s*(?:from|import)\s+tests\.(test_\w+)", re.M)


def copy_suite(dest: str, test_file: str) -> str:
    """dest/tests: the framework, the test file and the test files it imports, gunzipped.
    Returns the tests dir."""
    tdir = os.path.join(dest, "tests")
    os.makedirs(tdir)
    for fn in sorted(os.listdir(SUITE)):
        base = fn[:-3] if fn.endswith(".gz") else fn
        if base.startswith("test_"):
            continue
        _copy(fn, os.path.join(tdir, base))
    todo, done = [test_file], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        fn = name + ".py" if os.path.exists(os.path.join(SUITE, name + ".py")) else name + ".py.gz"
        if not os.path.exists(os.path.join(SUITE, fn)):
            raise FileNotFoundError(f"{name}.py is not in {SUITE}")
        path = os.path.join(tdir, name + ".py")
        _copy(fn, path)
        with open(path) as f:
            todo += _IMPORTS_TEST.findall(f.read())
    return tdir


def _copy(fn: str, dest: str) -> None:
    src = os.path.join(SUITE, fn)
    if fn.endswith(".gz"):
        with gzip.open(src, "rb") as fi, open(dest, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    else:
        shutil.copy(src, dest)


# ---- one file, inside its namespaces (the --inner mode) ---------------------------------
def _sh(*cmd) -> None:
    subprocess.run(cmd, check=True)


def setup_namespace(work: str) -> None:
    """Inside `unshare --net --mount`: lo up, /sys/class/infiniband/rnic0/device/net/lo."""
    _sh("ip", "link", "set", "lo", "up")
    saved = os.path.join(work, "sysclass")
    os.makedirs(saved)
    _sh("mount", "--bind", "/sys/class", saved)
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "rnic-sysclass", "/sys/class")
    for entry in os.listdir(saved):
        os.makedirs(os.path.join("/sys/class", entry))
        _sh("mount", "--bind", os.path.join(saved, entry), os.path.join("/sys/class", entry))
    os.makedirs("/sys/class/infiniband/rnic0/device/net/lo")


def inner(work: str, test_file: str, bind: str, real: bool = False) -> int:
    sys.path.insert(0, os.path.dirname(HERE))   # tests/: daemon_ready
    from daemon_ready import wait_ready
    sock = os.path.join(work, "rnicd.sock")
    log_path = os.path.join(work, "rnicd.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "clients", "python")])
    with open(log_path, "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "rnicd.cli", "--bind", bind,
                                   "--ctl-socket", sock, "--log-level", "warning"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(daemon, sock, log_path)
        tdir = os.path.join(work, "tests")
        runner = [os.path.join(tdir, "run_tests.py"), "--dev", "rnic0", "--port", "1",
                  "--gid", "0", "-v", f"tests.{test_file}"]
        if real:   # Debian's interpreter and pyverbs on our C libraries: `rnic exec`
            cmd = [sys.executable, "-m", "rnic.tool", "exec", "--socket", sock, "--",
                   SYSTEM_PYTHON, *runner]
            env["PYTHONPATH"] = os.path.join(ROOT, "clients", "python")   # for rnic.tool;
            # /usr/bin/python3 sees it too, harmless: the suite imports pyverbs, never rnic
        else:
            cmd = [sys.executable, *runner]
            env["PYTHONPATH"] = os.pathsep.join([os.path.join(HERE, "shim"),
                                                 env["PYTHONPATH"]])
            env["RNIC_SOCKET"] = sock
            env["RNIC_PYVERBS_ENUMS"] = os.path.join(os.path.dirname(work), "enums.json")
        r = subprocess.run(cmd, cwd=work, env=env)
        return r.returncode
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


# ---- the driver ---------------------------------------------------------------------------
_RESULT = re.compile(r"^(test\w*) \(([\w.]+)\)(?:\n.*?)?\s\.\.\.\s(ok|FAIL|ERROR|skipped"
                     r"|expected failure|unexpected success)(.*)$", re.M)
_RAN = re.compile(r"^Ran (\d+) tests? in", re.M)
_SUMMARY = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$", re.M)


def parse(out: str) -> dict:
    """Totals from unittest's verbose output (the summary line is authoritative)."""
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "ran": 0, "status": "ran"}
    m = _RAN.search(out)
    s = _SUMMARY.search(out)
    if not m or not s:
        res["status"] = "crashed"
        tb = [ln for ln in out.splitlines() if ln and not ln.startswith(" ")]
        res["crash"] = tb[-1][:200] if tb else "no output"
        return res
    res["ran"] = int(m.group(1))
    counts = dict(kv.split("=") for kv in (s.group(2) or "").split(", ") if "=" in kv)
    res["failed"] = int(counts.get("failures", 0))
    res["errors"] = int(counts.get("errors", 0))
    res["skipped"] = int(counts.get("skipped", 0))
    res["passed"] = (res["ran"] - res["failed"] - res["errors"] - res["skipped"]
                     - int(counts.get("expected failures", 0))
                     - int(counts.get("unexpected successes", 0)))
    res["first_errors"] = first_errors(out)
    return res


def first_errors(out: str) -> dict:
    """Last line of each ERROR/FAIL traceback, counted (what to fix first)."""
    tally: dict = {}
    for block in re.split(r"^={50,}$", out, flags=re.M)[1:]:
        lines = [ln for ln in block.split("-" * 70, 1)[-1].splitlines() if ln.strip()]
        exc = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln)]
        key = (exc[-1] if exc else (lines[-1] if lines else "?"))[:160]
        tally[key] = tally.get(key, 0) + 1
    return dict(sorted(tally.items(), key=lambda kv: -kv[1]))


def can_unshare() -> str | None:
    """None when private net+mount namespaces work here, else the reason they do not."""
    if not shutil.which("unshare"):
        return "unshare(1) is not installed"
    r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "true"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return None if r.returncode == 0 else f"unshare --net --mount failed: {r.stdout.strip()}"


def run_file(top: str, test_file: str, netns: bool, verbose: bool, real: bool = False) -> dict:
    work = os.path.join(top, test_file)
    os.makedirs(work)
    copy_suite(work, test_file)
    me = os.path.abspath(__file__)
    if netns:
        cmd = ["unshare", "--net", "--mount", "--propagation", "private", sys.executable,
               me, "--inner", work, test_file, "--bind", "127.0.0.1", "--setup-ns"]
    else:
        bind = f"127.{100 + os.getpid() % 100}.{7}.{1 + len(os.listdir(top)) % 250}"
        cmd = [sys.executable, me, "--inner", work, test_file, "--bind", bind]
    if real:
        cmd.append("--real-pyverbs")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=FILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        out += f"\n[run_suite] {test_file}: killed after {FILE_TIMEOUT:.0f} s\n"
    with open(os.path.join(work, "output.txt"), "w") as f:
        f.write(out)
    if verbose:
        sys.stderr.write(out)
    res = parse(out)
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["output"] = os.path.join(work, "output.txt")
    return res


def select(spec: str) -> list:
    if spec == "core":
        return list(CORE)
    if spec == "generic":
        return list(GENERIC)
    if spec == "all":
        return CORE + GENERIC
    return [s.strip().removesuffix(".py") for s in spec.split(",") if s.strip()]


def table(results: dict) -> str:
    rows = [f"{'file':24} {'pass':>5} {'fail':>5} {'error':>5} {'skip':>5}  note"]
    tot = [0, 0, 0, 0]
    for name, r in results.items():
        vals = [r["passed"], r["failed"], r["errors"], r["skipped"]]
        tot = [a + b for a, b in zip(tot, vals, strict=True)]
        note = r.get("crash", "") if r["status"] != "ran" else ""
        rows.append(f"{name:24} {vals[0]:5} {vals[1]:5} {vals[2]:5} {vals[3]:5}  {note}")
    rows.append(f"{'total':24} {tot[0]:5} {tot[1]:5} {tot[2]:5} {tot[3]:5}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="core", help="core, generic, all or test_a,test_b")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", help="work in this directory and keep it")
    ap.add_argument("--real-pyverbs", action="store_true",
                    help="run the suite on Debian's own pyverbs (/usr/bin/python3) through "
                    "rnicd's C libraries (`rnic exec`) instead of on the rnic client")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the runner's output")
    ap.add_argument("--inner", nargs=2, metavar=("WORKDIR", "TESTFILE"), help=argparse.SUPPRESS)
    ap.add_argument("--bind", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--setup-ns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        if args.setup_ns:
            setup_namespace(args.inner[0])
        return inner(args.inner[0], args.inner[1], args.bind, args.real_pyverbs)
    try:
        ensure_pyverbs(log=lambda m: print(m, file=sys.stderr))
    except Missing as exc:
        print(f"run_suite: {exc}", file=sys.stderr)
        return 3
    if args.real_pyverbs:
        sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
        from rnic import clib
        if clib.missing():
            print(f"run_suite: {', '.join(clib.missing())} not built in {clib.libdir()} "
                  "(make clib)", file=sys.stderr)
            return 3
    top = args.keep or tempfile.mkdtemp(prefix="rnic-pyverbs-suite-")
    os.makedirs(top, exist_ok=True)
    if not args.real_pyverbs:
        dump_enums(os.path.join(top, "enums.json"))
    why = can_unshare()
    if why:
        print(f"run_suite: no private namespaces ({why}); rnicd binds a 127.x address and "
              "base.py's netdev lookup finds nothing", file=sys.stderr)
    results = {}
    for f in select(args.files):
        try:
            results[f] = run_file(top, f, why is None, args.verbose, args.real_pyverbs)
        except (OSError, subprocess.SubprocessError) as exc:
            results[f] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0,
                          "status": "crashed", "crash": str(exc)}
        if not args.json:
            print(f"{f}: {results[f]['passed']} passed, {results[f]['failed']} failed, "
                  f"{results[f]['errors']} errors, {results[f]['skipped']} skipped",
                  file=sys.stderr, flush=True)
    if args.json:
        json.dump({"workdir": top, "results": results}, sys.stdout, indent=1)
        print()
    else:
        print(table(results))
        print(f"(outputs in {top})")
    return 1 if any(r["status"] != "ran" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

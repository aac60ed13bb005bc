"""rdma-core's own pyverbs test suite (Debian's rdma-core 44.0) against rnic: the ratchet.

tests/pyverbs_suite/run_suite.py runs the suite unmodified, one rnicd per file, in two modes:
on the rnic client (its pyverbs shim; floor.json) and on Debian's own pyverbs through rnicd's
C libraries, `rnic exec` (--real-pyverbs; floor-real.json, every listed file: about 25 s).
Each test fails when any file passes fewer tests than its floor records (raise the floor
whenever a change makes more tests pass), or when a file it lists as clean has a failure or
an error. It skips, saying why, when python3-pyverbs is not installed and cannot be installed
here (or, for the real-pyverbs mode, when the C libraries cannot be built).
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE_DIR = os.path.join(os.path.dirname(HERE), "pyverbs_suite")


def run_against_floor(tmp_path, floor_file, *mode):
    with open(os.path.join(SUITE_DIR, floor_file)) as f:
        doc = json.load(f)
    floor, clean = doc["min_passed"], set(doc.get("clean", ()))
    r = subprocess.run([sys.executable, os.path.join(SUITE_DIR, "run_suite.py"), *mode,
                        "--files", ",".join(floor), "--json",
                        "--keep", str(tmp_path / "suite")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=3500)
    if r.returncode == 3:
        print(r.stderr)
        pytest.skip(r.stderr.strip().splitlines()[-1])
    out = json.loads(r.stdout)
    results = out["results"]
    rows = [f"{name}: {res['passed']} passed (floor {floor[name]}), {res['failed']} failed, "
            f"{res['errors']} errors, {res['skipped']} skipped {res.get('crash', '')}"
            for name, res in results.items()]
    print("\n".join(rows))
    below = [row for name, row in zip(results, rows, strict=True)
             if results[name]["passed"] < floor[name]
             or name in clean and results[name]["failed"] + results[name]["errors"]]
    assert not below, ("passes fell below the floor, or a clean file failed (outputs in "
                       f"{out['workdir']}):\n" + "\n".join(below))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rdma_core_pyverbs_suite_meets_floor(tmp_path):
    run_against_floor(tmp_path, "floor.json")


@pytest.mark.timeout(600)
def test_rdma_core_suite_on_real_pyverbs_meets_floor(tmp_path):
    """Debian's python3-pyverbs (compiled against libibverbs) on rnicd's C libraries."""
    run_against_floor(tmp_path, "floor-real.json", "--real-pyverbs")

"""rdma-core's own pyverbs test suite (Debian's rdma-core 44.0) against rnic: the ratchet.

tests/pyverbs_suite/run_suite.py runs the suite unmodified, one rnicd per file; this test
fails when any file passes fewer tests than tests/pyverbs_suite/floor.json records (raise the
floor whenever a change makes more tests pass), or when a file it lists as clean has a failure
or an error. It skips, saying why, when python3-pyverbs is
not installed and cannot be installed here.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE_DIR = os.path.join(os.path.dirname(HERE), "pyverbs_suite")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rdma_core_pyverbs_suite_meets_floor(tmp_path):
    with open(os.path.join(SUITE_DIR, "floor.json")) as f:
        doc = json.load(f)
    floor, clean = doc["min_passed"], set(doc.get("clean", ()))
    r = subprocess.run([sys.executable, os.path.join(SUITE_DIR, "run_suite.py"), "--files",
                        ",".join(floor), "--json",
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

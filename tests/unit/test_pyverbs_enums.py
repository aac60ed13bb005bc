"""rnic.enums against the real pyverbs.enums (Debian's python3-pyverbs, rdma-core 44): every
name it has, rnic has, with the same value. Skips, saying why, where pyverbs is missing."""
import json
import os
import subprocess

import pytest
import rnic.enums as e

SYSTEM_PYTHON = "/usr/bin/python3"
DUMP = ("import json, pyverbs.enums as e; print(json.dumps({k: getattr(e, k) for k in dir(e) "
        "if not k.startswith('__') and isinstance(getattr(e, k), int)}))")


@pytest.fixture(scope="module")
def real_enums():
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} missing: no reference pyverbs")
    r = subprocess.run([SYSTEM_PYTHON, "-c", DUMP], capture_output=True, text=True, timeout=60)
    if r.returncode:
        msg = "python3-pyverbs not installed (make pyverbs-suite installs it)"
        print(msg)
        pytest.skip(msg)
    return json.loads(r.stdout)


def test_every_pyverbs_enum_name_with_its_value(real_enums):
    missing = sorted(k for k in real_enums if not hasattr(e, k))
    assert not missing, f"rnic.enums lacks {missing}"
    differ = {k: (int(getattr(e, k)), v) for k, v in real_enums.items() if int(getattr(e, k)) != v}
    assert not differ, f"values differ (rnic, pyverbs): {differ}"

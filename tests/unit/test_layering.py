"""House rule 1: imports point one way (wire <- core <- api <- io/daemon), and wire/ and core/
do no I/O and read no clock."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "rnicd"
FORBIDDEN = {"asyncio", "socket", "os", "time", "pyroute2", "uvloop", "select", "mmap"}
UPWARD = {"wire": ("rnicd.core", "rnicd.api", "rnicd.io", "rnicd.daemon"),
          "core": ("rnicd.api", "rnicd.io", "rnicd.daemon"),
          "api": ("rnicd.io", "rnicd.daemon")}


def imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("layer", sorted(UPWARD))
def test_imports_point_one_way(layer):
    for path in (ROOT / layer).rglob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            if layer in ("wire", "core"):
                assert top not in FORBIDDEN, f"{path.relative_to(ROOT)} imports {name}"
            assert not name.startswith(UPWARD[layer]), f"{path.relative_to(ROOT)} imports {name}"


def test_daemon_never_imports_the_client():
    """The client (`rnic`, its command-line tools included) builds on the daemon's wire/
    definitions, never the other way round: the daemon package must run without it."""
    for path in ROOT.rglob("*.py"):
        for name in imports(path):
            assert name.split(".")[0] != "rnic", f"{path.relative_to(ROOT)} imports {name}"

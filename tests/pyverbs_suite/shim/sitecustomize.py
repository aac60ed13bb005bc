"""Plumbing for running rdma-core's pyverbs test suite against ``rnic`` (see run_suite.py).

Loaded by the interpreter at start-up (this directory is first on PYTHONPATH). It installs
one import hook and does nothing else:

- ``pyverbs`` and ``pyverbs.X`` are the modules ``rnic`` and ``rnic.X`` (the same module
  objects, so ``pyverbs.qp.QP is rnic.qp.QP``). A module rnic lacks is not found: the suite
  fails to import it, as it would with any pyverbs that lacks it.
- The enumeration modules (``pyverbs.enums``, ``pyverbs.cm_enums`` and the providers'
  ``*_enums``) are rnic's module plus, for each name rnic lacks, the real pyverbs' value, read
  from the JSON file named by $RNIC_PYVERBS_ENUMS (run_suite.py dumps it from Debian's
  python3-pyverbs). No value of rnic's is replaced.
"""
import enum
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys

_ENUMS_JSON = os.environ.get("RNIC_PYVERBS_ENUMS")


def _target(name: str) -> str:
    return "rnic" + name[len("pyverbs"):]


class _AliasLoader(importlib.abc.Loader):
    """Returns the rnic module itself; keeps the rnic module's own __spec__."""

    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        mod = importlib.import_module(self.target)
        self._spec = mod.__spec__
        return mod

    def exec_module(self, module):
        module.__spec__ = self._spec   # importlib set it to the pyverbs spec; restore


class _EnumLoader(importlib.abc.Loader):
    """rnic's enum module (when it has one) plus the real pyverbs' values rnic lacks."""

    def __init__(self, target: str, real: dict):
        self.target = target
        self.real = real

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        try:
            ours = importlib.import_module(self.target)
        except ModuleNotFoundError:
            ours = None
        if ours is not None:
            for k, v in vars(ours).items():
                if not k.startswith("__"):
                    setattr(module, k, v)
        for cls, members in self.real.get("classes", {}).items():
            if not hasattr(module, cls):
                setattr(module, cls, enum.IntEnum(cls, members))
        for k, v in self.real.get("flat", {}).items():
            if not hasattr(module, k):
                cls = self.real.get("member_of", {}).get(k)
                setattr(module, k, getattr(module, cls)[k] if cls and
                        isinstance(getattr(module, cls, None), enum.EnumMeta) and
                        k in getattr(module, cls).__members__ else v)


class PyverbsToRnic(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.enums = {}
        if _ENUMS_JSON:
            with open(_ENUMS_JSON) as f:
                self.enums = json.load(f)

    def find_spec(self, name, path=None, target=None):
        if name != "pyverbs" and not name.startswith("pyverbs."):
            return None
        tgt = _target(name)
        if name in self.enums:
            return importlib.machinery.ModuleSpec(name, _EnumLoader(tgt, self.enums[name]))
        try:
            spec = importlib.util.find_spec(tgt)
        except ModuleNotFoundError:
            return None
        if spec is None:
            return None
        return importlib.machinery.ModuleSpec(
            name, _AliasLoader(tgt), is_package=spec.submodule_search_locations is not None)


if not any(isinstance(f, PyverbsToRnic) for f in sys.meta_path):
    sys.meta_path.insert(0, PyverbsToRnic())

# cffi's build hook needs setup.py; all other metadata lives in pyproject.toml.
# build_py also builds rnicd's libibverbs.so.1 and librdmacm.so.1 (clients/c) into the package's
# private rnic/lib (`rnic libdir`); without a C compiler, make or rdma-core's headers the package still builds
# and `rnic exec` says what is missing.
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_clib(build_py):
    def run(self):
        super().run()
        out = os.path.abspath(os.path.join(self.build_lib, "rnic", "lib"))
        tmp = os.path.abspath(os.path.join(self.build_lib, "..", "clib-obj"))
        try:
            subprocess.run(["make", "-s", "-C", os.path.join(HERE, "clients", "c"),
                            f"OUT={out}", f"BUILD={tmp}"], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"rnicd: the C libraries (clients/c) were not built: {exc}", file=sys.stderr)


setup(cffi_modules=["native/build_ffi.py:ffibuilder"],
      cmdclass={"build_py": build_py_with_clib})

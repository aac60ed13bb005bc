"""cffi builder of ``rnicd._native``, the C data plane (out-of-line API mode).

setup.py names ``native/build_ffi.py:ffibuilder``; ``pip install -e .`` and
``python setup.py build_ext --inplace`` (``make native``) compile it next to
``rnicd/__init__.py`` (as ``_native.abi3.so``). There is deliberately no second way to build
it: a module built under another file name would shadow the one ``make native`` refreshes.

The cdef is generated from the C headers themselves (``include/rnic_abi.h``, the
shared-memory ABI, and ``include/rnic_dp.h``, the data-plane functions), so every layout
and signature has one definition; in API mode cffi also checks each struct's field
offsets against the C compiler's at build time.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE_DIR = os.path.join(HERE, "include")
SRC_DIR = os.path.join(HERE, "src")
HEADERS = ("rnic_abi.h", "rnic_opcodes.h", "rnic_dp.h")
SOURCES = ("opcodes.c", "crc.c", "icrc.c", "ring.c", "place.c", "batchio.c", "hdr.c", "check.c",
           "rx.c", "sq.c", "cq.c", "txn.c", "steer.c", "fault.c", "arena.c", "engine.c")

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+\S")


def header_cdef(path: str) -> str:
    """Text of a header that cffi's cdef accepts: comments and preprocessor lines removed,
    except ``#define NAME value``, which becomes ``#define NAME ...`` (the compiler fills in
    the value, so it is not written twice)."""
    with open(path, encoding="utf-8") as f:
        text = _COMMENT.sub(" ", f.read())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            m = _DEFINE.match(stripped)
            if m:
                out.append(f"#define {m.group(1)} ...")
            continue
        if stripped:
            out.append(line.rstrip())
    return "\n".join(out) + "\n"


def _build() -> FFI:
    builder = FFI()
    builder.cdef("".join(header_cdef(os.path.join(INCLUDE_DIR, h)) for h in HEADERS))
    builder.set_source(
        "rnicd._native",
        '#include "rnic_dp.h"\n' + "".join(f'#include "{s}"\n' for s in SOURCES),
        include_dirs=[INCLUDE_DIR, SRC_DIR],
        define_macros=[("_GNU_SOURCE", "1")],
        # Only portable code at file level: SSE4.2/PCLMUL are enabled per function with
        # target attributes and chosen at load time, so the module loads on any x86-64.
        # No interposition: the fast path's calls to the shared checks (check.c) stay direct
        # and inlinable instead of going through the PLT.
        extra_compile_args=["-O3", "-std=gnu11", "-fno-semantic-interposition"],
        # Rebuild (make native) when any C source or header changes.
        depends=[os.path.join(SRC_DIR, s) for s in (*SOURCES, "dp_util.h")]
        + [os.path.join(INCLUDE_DIR, h) for h in HEADERS],
    )
    return builder


ffibuilder = _build()

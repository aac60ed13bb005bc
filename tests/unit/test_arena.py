"""The state arena (native/src/arena.c): what native.shared_new allocates is zeroed (also a
block used before), and a process forked afterwards shares it at the same address (what
the engines rely on: docs/engines.md)."""
import gc
import os

from rnicd import native

ffi = native.ffi


def test_blocks_come_zeroed_also_when_reused():
    for n in (100, 5000, 200_000):             # a small, a page-sized and a removed block
        a = native.shared_new("uint8_t[]", n)
        addr = int(ffi.cast("uintptr_t", a))
        ffi.memmove(a, b"\xa5" * n, n)
        del a
        gc.collect()
        b = native.shared_new("uint8_t[]", n)
        assert int(ffi.cast("uintptr_t", b)) == addr     # the freed block, taken again
        assert bytes(ffi.buffer(b)) == bytes(n)


def test_a_forked_process_shares_the_records():
    qp = native.shared_new("struct rnic_dp_qp *", {"qpn": 0x42})
    pid = os.fork()
    if pid == 0:                                # the child: as an engine would
        qp.epsn = 0x123456
        os._exit(0 if qp.qpn == 0x42 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert qp.epsn == 0x123456
    assert native.lib.rnic_arena_used() > 0

"""An engine killed between any two instructions loses nothing (issue 23; the journal of
native/src/txn.c, docs/failover.md).

A forked child, traced with ptrace, enters rnic_dp_rx_one with one packet (as an engine
does) and is single-stepped through the whole call. Everything it can write lives in shared
memory, as an engine's state does (the arena, and rings and regions mapped MAP_SHARED here),
so after every instruction the parent takes an image of that memory: exactly what a SIGKILL
at that instruction would leave. For each distinct image the parent, in the daemon's role,
restores it, recovers the QP (rnicd.io.engines.recover: rnic_dp_recover, the dead writer's
locks broken, finished WQEs completed), delivers the same packet again (as the peer's
retransmission would) and must find exactly the outcome of an uninterrupted run: one CQE,
the consumer index moved once, the atomic executed once.
"""
from __future__ import annotations

import ctypes
import gc
import mmap
import os
import signal

import pytest
from rc_harness import FakeShm, Host, connect

from rnicd import native
from rnicd.io.engines import recover
from rnicd.wire import abi

lib, ffi = native.lib, native.ffi
PTRACE_TRACEME, PTRACE_PEEKTEXT, PTRACE_PEEKDATA, PTRACE_POKETEXT = 0, 1, 2, 4
PTRACE_CONT, PTRACE_SINGLESTEP, PTRACE_GETREGS, PTRACE_SETREGS = 7, 9, 12, 13
WORD = (1 << 64) - 1
DEAD_ID = 0x7EAD0001        # the lock_id the child writes with (an engine's is its pid)


class Regs(ctypes.Structure):       # struct user_regs_struct, x86-64
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags "
        "rsp ss fs_base gs_base ds es fs gs").split()]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(req, pid, addr=0, data=0) -> int:
    ctypes.set_errno(0)
    r = _libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if r == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r & WORD


class SharedShm(FakeShm):
    """Rings in MAP_SHARED memory: what a forked child writes, the parent sees."""

    def __init__(self):
        super().__init__()
        self.rings = []

    def new_ring(self, kind, esz, n, max_sge, max_inline):
        buf = mmap.mmap(-1, native.ring_bytes(esz, n))
        native.ring_init(buf, kind, esz, n, max_sge, max_inline)
        self.rings.append(buf)
        return native.RingView(buf), next(self._tok), len(buf)


def shared_memory(*hosts) -> list:
    """Every buffer the data plane may write for these hosts: device records, the atomic
    lock, QP records with their WQE descriptors and pieces, CQ records, rings, regions."""
    out = []
    for h in hosts:
        dp = h.dev.dp
        out += [ffi.buffer(dp), ffi.buffer(dp.atomic_lock, 4)]
        for qp in h.s.qps.values():
            out += [ffi.buffer(qp.dp), ffi.buffer(qp._recv_pieces),
                    ffi.buffer(qp.requester._swqes), ffi.buffer(qp.requester._pieces)]
        out += [ffi.buffer(cq.dp) for cq in h.s.cqs.values()]
        out += h.shm.rings + list(h.shm.regions.values())
    return out


def pair():
    a, b = Host("10.9.0.1", shm=SharedShm()), Host("10.9.0.2", shm=SharedShm())
    ca, cb = a.cq(), b.cq()
    qa, qb = a.qp(ca), b.qp(cb)
    connect(a, qa, b, qb)
    ma, mb = a.mr(4096, buf=mmap.mmap(-1, 4096)), b.mr(4096, buf=mmap.mmap(-1, 4096))
    return a, ca, qa, ma, b, cb, qb, mb


def sent(h):
    return [data for data, _addr in h.dev.take_tx()]


class Case:
    """victim's data plane runs `call(*args)` (its first argument victim's device record);
    `again()` is what follows recovery (the packet delivered again, as the peer's
    retransmission would, or the pump the substitute runs), in C only: the images rewind
    shared memory, not core/'s Python objects; `check()` the outcome an uninterrupted run
    has."""

    def __init__(self, victim, qp, call, args, again, check, *hosts):
        self.victim, self.qp, self.call, self.args = victim, qp, call, args
        self.again, self.check, self.memory = again, check, shared_memory(*hosts)


def queued(h) -> list[bytes]:
    """The datagrams h's data plane queued, taken from its transmit buffer."""
    dp = h.dev.dp
    out = [bytes(ffi.buffer(dp.tx_bufs + i * dp.tx_buf_size, dp.tx_lens[i]))
           for i in range(dp.ntx)]
    dp.ntx = 0
    return out


def deliver(h, pkt, src) -> int:
    return lib.rnic_dp_rx_one(h.dev.dp, ffi.from_buffer(pkt), len(pkt),
                              native.ipv4_be(src.dev.ip), 4791)


def rx(h, pkt, src):
    return ("rnic_dp_rx_one", (ffi.from_buffer(pkt), len(pkt), native.ipv4_be(src.dev.ip), 4791),
            lambda: deliver(h, pkt, src))


def case_send():
    """b receives a SEND ONLY: a receive WQE consumed, a CQE, ePSN and MSN advanced."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    ma.buf[:64] = bytes(range(64))
    b.post_recv(qb, 77, [mb.sge(0, 256)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 64)])
    pkt, = sent(a)

    def check():
        assert b.poll(cb) == [dict(wr_id=77, status=abi.WCStatus.IBV_WC_SUCCESS,
                                   opcode=abi.IBV_WC_RECV, byte_len=64, imm_data=0,
                                   qp_num=qb.qp_num, src_qp=qa.qp_num, wc_flags=0)]
        assert bytes(mb.buf[:64]) == bytes(range(64))
        assert qb.dp.epsn == 101 and qb.dp.msn == 1 and qb.rq.ring.load_cons() == 1
    return Case(b, qb, *rx(b, pkt, a), check, a, b)


def case_write_middle():
    """b places the MIDDLE packet of a three-packet RDMA WRITE (its LAST follows)."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    ma.buf[:3000] = bytes(i * 7 % 251 for i in range(3000))
    a.post_send(qa, 1, abi.IBV_WR_RDMA_WRITE, [ma.sge(0, 3000)], rkey=mb.rkey, raddr=mb.iova)
    first, middle, last = sent(a)
    b.dev.receive(first, a.dev.ip, 4791, b.now)
    call, args, redeliver = rx(b, middle, a)

    def again():
        redeliver()
        deliver(b, last, a)

    def check():
        assert bytes(mb.buf[:3000]) == bytes(ma.buf[:3000]) and qb.dp.epsn == 103
        assert qb.dp.msn == 1 and b.poll(cb) == []
    return Case(b, qb, call, args, again, check, a, b)


def case_ack():
    """a receives the coalesced ACK of three SENDs: three CQEs in order, the SQ's consumer
    index at 3, una past them."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    for i in range(3):
        b.post_recv(qb, 10 + i, [mb.sge(256 * i, 256)])
        a.post_send(qa, i, abi.IBV_WR_SEND, [ma.sge(64 * i, 64)])
    for data in sent(a):
        b.dev.receive(data, a.dev.ip, 4791, b.now)
    b.dev.end_batch(b.now)
    ack, = sent(b)

    def check():
        got = [(c["wr_id"], c["status"]) for c in a.poll(ca)]
        assert got == [(i, abi.WCStatus.IBV_WC_SUCCESS) for i in range(3)]
        assert qa.dp.una == 103 and qa.sq_ring.load_cons() == 3
    return Case(a, qa, *rx(a, ack, b), check, a, b)


def case_read_last():
    """a places the LAST response of a two-packet RDMA READ: the WQE completes."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    mb.buf[:2048] = bytes(i * 13 % 253 for i in range(2048))
    a.post_send(qa, 9, abi.IBV_WR_RDMA_READ, [ma.sge(0, 2048)], rkey=mb.rkey, raddr=mb.iova)
    req, = sent(a)
    b.dev.receive(req, a.dev.ip, 4791, b.now)
    b.dev.end_batch(b.now)
    b.dev.produce(b.now)
    first, last = sent(b)
    a.dev.receive(first, b.dev.ip, 4791, a.now)

    def check():
        assert [(c["wr_id"], c["status"], c["opcode"]) for c in a.poll(ca)] == [
            (9, abi.WCStatus.IBV_WC_SUCCESS, abi.IBV_WC_RDMA_READ)]
        assert bytes(ma.buf[:2048]) == bytes(mb.buf[:2048])
        assert qa.dp.una == 102 and qa.sq_ring.load_cons() == 1
    return Case(a, qa, *rx(a, last, b), check, a, b)


def case_send_first():
    """b takes a receive WQE for the FIRST packet of a three-packet SEND (its consumer index
    published with the packet's change); MIDDLE and LAST follow: one CQE, every byte."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    ma.buf[:2500] = bytes(i * 11 % 249 for i in range(2500))
    b.post_recv(qb, 31, [mb.sge(0, 4096)])
    a.post_send(qa, 1, abi.IBV_WR_SEND, [ma.sge(0, 2500)])
    first, middle, last = sent(a)
    call, args, redeliver = rx(b, first, a)

    def again():
        redeliver()
        deliver(b, middle, a)
        deliver(b, last, a)

    def check():
        assert [(c["wr_id"], c["byte_len"]) for c in b.poll(cb)] == [(31, 2500)]
        assert bytes(mb.buf[:2500]) == bytes(ma.buf[:2500])
        assert qb.dp.epsn == 103 and qb.dp.msn == 1 and qb.rq.ring.load_cons() == 1
    return Case(b, qb, call, args, again, check, a, b)


def case_read_request():
    """b starts answering a two-packet RDMA READ (ePSN past it, the READ's state set, its
    responses queued); after recovery the request comes again (new, or a duplicate that
    core/ answers again) and a gets every byte."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    mb.buf[:2048] = bytes(i * 5 % 241 for i in range(2048))
    a.post_send(qa, 4, abi.IBV_WR_RDMA_READ, [ma.sge(0, 2048)], rkey=mb.rkey, raddr=mb.iova)
    req, = sent(a)
    call, args, redeliver = rx(b, req, a)

    def again():
        if not redeliver():
            # committed: the request is a duplicate now, and its responses died with the
            # engine: core/ executes a duplicate READ again (9.7.5.1.4), as the daemon would
            b.dev.receive(req, a.dev.ip, 4791, b.now)
            b.dev.end_batch(b.now)
            b.dev.produce(b.now)
        for data in queued(b) + sent(b):
            deliver(a, data, b)

    def check():
        assert [(c["wr_id"], c["status"]) for c in a.poll(ca)] == [
            (4, abi.WCStatus.IBV_WC_SUCCESS)]
        assert bytes(ma.buf[:2048]) == bytes(mb.buf[:2048])
        assert qb.dp.epsn == 102 and qb.dp.msn == 1
    return Case(b, qb, call, args, again, check, a, b)


def case_atomic():
    """b executes a FETCH_AND_ADD: the counter moves once; a duplicate gets the kept result."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    mb.buf[8:16] = (1000).to_bytes(8, "little")
    a.post_send(qa, 5, abi.IBV_WR_ATOMIC_FETCH_AND_ADD, [ma.sge(0, 8)], rkey=mb.rkey,
                raddr=mb.iova + 8, compare_add=7)
    pkt, = sent(a)

    def check():
        assert int.from_bytes(mb.buf[8:16], "little") == 1007
        assert qb.dp.epsn == 101
        orig = ffi.new("uint64_t *")
        assert lib.rnic_dp_atomic_replay(qb.dp, 100, orig) == 0 and orig[0] == 1000
        assert int(ffi.cast("uint32_t *", b.dev.dp.atomic_lock)[0]) == 0
    return Case(b, qb, *rx(b, pkt, a), check, a, b)


def case_pump():
    """a's data plane fetches three posted SENDs and gives them PSNs (rnic_dp_pump); after
    recovery the substitute pumps again and the exchange runs to the end: every WQE
    completes once on both sides, the bytes in order, no PSN skipped or used twice."""
    a, ca, qa, ma, b, cb, qb, mb = pair()
    ma.buf[:192] = bytes(range(192))
    for i in range(3):
        b.post_recv(qb, 10 + i, [mb.sge(256 * i, 256)])
        a.post_send(qa, i, abi.IBV_WR_SEND, [ma.sge(64 * i, 64)], ring=False)

    def again():            # in C only, as engines would: no Python state to rewind
        lib.rnic_dp_pump(a.dev.dp, qa.dp)
        for data in queued(a):
            assert deliver(b, data, a) == 1
        lib.rnic_dp_flush_acks(b.dev.dp)
        for data in queued(b):
            assert deliver(a, data, b) == 1

    def check():
        assert [(c["wr_id"], c["status"]) for c in a.poll(ca)] == [
            (i, abi.WCStatus.IBV_WC_SUCCESS) for i in range(3)]
        assert [(c["wr_id"], c["byte_len"]) for c in b.poll(cb)] == [(10 + i, 64) for i in range(3)]
        assert all(bytes(mb.buf[256 * i:256 * i + 64]) == bytes(ma.buf[64 * i:64 * i + 64])
                   for i in range(3))
        assert qa.dp.una == qa.dp.next_psn == 103 and qb.dp.epsn == 103
    return Case(a, qa, "rnic_dp_pump", (qa.dp,), again, check, a, b)


CASES = {f.__name__[5:]: f for f in (case_send, case_send_first, case_write_middle, case_ack,
                                     case_read_request, case_read_last, case_atomic,
                                     case_pump)}


def images_of_a_traced_call(case) -> list[list[bytes]]:
    """Fork a child that runs the case's call under ptrace and single-step it through the
    call; the distinct images of the case's memory it leaves, from before the first
    instruction to after the last, in order."""
    dev = case.victim.dev.dp
    dev.lock_id = DEAD_ID
    entry = int(ffi.cast("uintptr_t", ffi.addressof(lib, case.call)))
    call = ffi.addressof(lib, case.call)            # through the pointer: the real function
    # The child must run no Python garbage collection: freeing this process's garbage in
    # the shared arena would free it for the parent too (an engine runs C only).
    gc.disable()
    pid = os.fork()
    if pid == 0:                                    # the "engine"
        try:
            _libc.ptrace(PTRACE_TRACEME, 0, None, None)
            os.kill(os.getpid(), signal.SIGSTOP)
            call(dev, *case.args)
        finally:
            os._exit(0)
    gc.enable()
    try:
        os.waitpid(pid, 0)                          # stopped by its SIGSTOP
        word = ptrace(PTRACE_PEEKTEXT, pid, entry)
        ptrace(PTRACE_POKETEXT, pid, entry, (word & ~0xFF) | 0xCC)   # int3 at the entry
        ptrace(PTRACE_CONT, pid)
        _, st = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(st) and os.WSTOPSIG(st) == signal.SIGTRAP
        regs = Regs()
        ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
        regs.rip = entry
        ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(regs))
        ptrace(PTRACE_POKETEXT, pid, entry, word)
        ret, sp = ptrace(PTRACE_PEEKDATA, pid, regs.rsp), regs.rsp + 8
        images = [[bytes(m) for m in case.memory]]
        while regs.rip != ret or regs.rsp != sp:
            ptrace(PTRACE_SINGLESTEP, pid)
            os.waitpid(pid, 0)
            ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
            now = [bytes(m) for m in case.memory]
            if now != images[-1]:
                images.append(now)
        return images
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        dev.lock_id = 0


def _ptrace_works():
    pid = os.fork()
    if pid == 0:
        try:
            _libc.ptrace(PTRACE_TRACEME, 0, None, None)
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    _, st = os.waitpid(pid, 0)
    ok = os.WIFSTOPPED(st) and os.WSTOPSIG(st) == signal.SIGSTOP
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return ok


@pytest.mark.parametrize("name", list(CASES))
def test_a_kill_at_any_instruction_is_recovered(name):
    if not _ptrace_works():
        pytest.skip("ptrace(PTRACE_TRACEME) is not allowed here (seccomp or Yama)")
    gc.collect()            # earlier tests' garbage goes now, not while the child runs
    case = CASES[name]()
    images = images_of_a_traced_call(case)
    dp = case.victim.dev.dp
    outcomes = {}
    for k, image in enumerate(images):
        for m, saved in zip(case.memory, image, strict=True):
            m[:] = saved                            # the memory a kill here leaves
        found = case.qp.dp.txn.state
        outcomes[found] = outcomes.get(found, 0) + 1
        recover(case.victim.dev, [case.qp.qp_num], DEAD_ID, "the test's child")
        dp.ntx = dp.nacks = dp.npumps = dp.nnotify = 0  # a substitute starts with none
        case.again()
        assert case.qp.dp.txn.state == lib.RNIC_DP_TXN_NONE
        try:
            case.check()
        except AssertionError as exc:
            raise AssertionError(f"killed at change {k} of {len(images)} (journal state "
                                 f"{found}): {exc}") from exc
    # each kind of moment was hit: outside a change, inside one, while committing
    assert set(outcomes) == {lib.RNIC_DP_TXN_NONE, lib.RNIC_DP_TXN_OPEN,
                             lib.RNIC_DP_TXN_COMMIT}, outcomes

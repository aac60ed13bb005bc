"""MRs on ordinary process memory (docs/memory-registration.md) and ibv_rereg_mr, between two
real daemons: the data is checked from the application's own view of its buffer."""
import ctypes
import errno
import fcntl
import mmap
import os

import pytest
import rnic.enums as e
import rnic.mem_alloc as mem
from rc_pair import Side, connect, poll_n
from rnic import _usermem
from rnic.errors import RnicError
from rnic.mr import MR
from rnic.pd import PD
from rnic.wr import SGE, RecvWR, SendWR

P = mmap.PAGESIZE
RW = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ


@pytest.fixture
def pair(two_daemons):
    da, db = two_daemons
    a, b = Side(da, mr_size=1 << 16), Side(db, mr_size=1 << 16)
    connect(a, b)
    yield a, b
    a.close()
    b.close()
    assert _usermem.spans() == []       # every span went back with its last MR


def write_to(a, rkey, raddr, data, wr_id=1):
    """a RDMA WRITEs data (staged in its own MR) to raddr; -> the completion status."""
    a.mr.write(data, len(data), 0)
    wr = SendWR(wr_id=wr_id, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                sg=[SGE(a.mr.buf, len(data), a.mr.lkey)], send_flags=e.IBV_SEND_SIGNALED)
    wr.set_wr_rdma(rkey, raddr)
    a.qp.post_send(wr)
    return poll_n(a.cq, 1)[0].status


def read_from(a, rkey, raddr, n, wr_id=2):
    wr = SendWR(wr_id=wr_id, opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                sg=[SGE(a.mr.buf + 32768, n, a.mr.lkey)], send_flags=e.IBV_SEND_SIGNALED)
    wr.set_wr_rdma(rkey, raddr)
    a.qp.post_send(wr)
    (wc,) = poll_n(a.cq, 1)
    assert wc.status == e.IBV_WC_SUCCESS
    return a.mr.read(n, 32768)


def anon(pages, prot=mmap.PROT_READ | mmap.PROT_WRITE, flags=None):
    flags = mem.MAP_PRIVATE_ | mem.MAP_ANONYMOUS_ if flags is None else flags
    return mem.mmap(length=pages * P, prot=prot, flags=flags, fd=-1)


def maps_at(addr):
    return next(v for v in _usermem.read_maps() if v.start <= addr < v.end)


@pytest.mark.parametrize("kind", ["posix_memalign", "malloc", "mmap", "bytearray"])
def test_write_read_send_into_program_memory(pair, kind):
    a, b = pair
    n, keep = 10000, None
    if kind == "posix_memalign":
        addr = mem.posix_memalign(n, 64)
    elif kind == "malloc":
        addr = mem.malloc(n)
    elif kind == "mmap":
        addr = anon(3) + 123
    else:
        keep = bytearray(n)
        addr = ctypes.addressof((ctypes.c_char * n).from_buffer(keep))
    mr = MR(b.pd, n, RW, address=addr)
    assert (mr.buf, mr.length) == (addr, n)
    data = os.urandom(n)
    assert write_to(a, mr.rkey, addr + 0, data) == e.IBV_WC_SUCCESS
    assert mem.read(addr, n) == data                       # the program's own view
    if keep is not None:
        assert bytes(keep) == data
    mem.write(addr, b"from the program", 16, 500)          # the program writes; READ sees it
    assert read_from(a, mr.rkey, addr + 500, 16) == b"from the program"
    assert mr.read(16, 500) == b"from the program"
    b.qp.post_recv(RecvWR(wr_id=7, num_sge=1, sg=[SGE(addr + 1000, 64, mr.lkey)]))
    a.mr.write(b"S" * 64, 64, 0)
    a.qp.post_send(SendWR(wr_id=8, opcode=e.IBV_WR_SEND, num_sge=1,
                          sg=[SGE(a.mr.buf, 64, a.mr.lkey)], send_flags=e.IBV_SEND_SIGNALED))
    assert poll_n(a.cq, 1)[0].status == e.IBV_WC_SUCCESS
    (wc,) = poll_n(b.cq, 1)
    assert (wc.wr_id, wc.status, wc.byte_len) == (7, e.IBV_WC_SUCCESS, 64)
    assert mem.read(addr, 64, 1000) == b"S" * 64
    mr.close()
    assert mem.read(addr, 16, 500) == b"from the program"  # contents survive dereg
    if kind in ("posix_memalign", "malloc"):
        mem.free(addr)


def test_partial_pages_keep_their_neighbours(pair):
    a, b = pair
    base = anon(3)
    mem.write(base, b"\xaa" * 3 * P, 3 * P)
    addr, n = base + 100, 2 * P - 50                      # parts of pages 0 and 2
    mr = MR(b.pd, n, RW, address=addr)
    assert "rnic-mr" in maps_at(base).path
    assert write_to(a, mr.rkey, addr, b"\x55" * n) == e.IBV_WC_SUCCESS
    assert mem.read(base, 100) == b"\xaa" * 100            # before the MR, same page
    assert mem.read(addr, n) == b"\x55" * n
    assert mem.read(addr + n, 3 * P - 100 - n) == b"\xaa" * (3 * P - 100 - n)
    # the program's writes next to the MR stay its own (and stay put)
    mem.write(base, b"neighbour", 9, 0)
    assert write_to(a, mr.rkey, addr + n - 8, b"lastbyte") == e.IBV_WC_SUCCESS
    assert mem.read(base, 9) == b"neighbour"
    assert write_to(a, mr.rkey, addr + n - 7, b"lastbyte") == e.IBV_WC_REM_ACCESS_ERR
    mr.close()
    v = maps_at(base)                                       # private anonymous memory again
    assert "rnic-mr" not in v.path and v.perms == "rw-p"
    assert mem.read(base, 9) == b"neighbour" and mem.read(addr + n - 8, 8) == b"lastbyte"
    mem.munmap(base, 3 * P)


def test_overlapping_mrs_share_the_pages(pair):
    a, b = pair
    base = anon(4)
    mr1 = MR(b.pd, P + P // 2, RW, address=base)                # pages 0-1
    mr2 = MR(b.pd, 2 * P + 16, RW, address=base + P + 8)         # pages 1-3
    ours = [s for s in _usermem.spans() if base <= s[0] < base + 4 * P]
    assert ours == [(base, base + 2 * P, 2), (base + 2 * P, base + 4 * P, 1)]
    assert write_to(a, mr2.rkey, base + P + 8, b"through mr2") == e.IBV_WC_SUCCESS
    assert read_from(a, mr1.rkey, base + P + 8, 11) == b"through mr2"
    assert mem.read(base + P + 8, 11) == b"through mr2"
    mr1.close()                                                  # mr2 keeps the shared page
    assert write_to(a, mr2.rkey, base + P + 8, b"still there") == e.IBV_WC_SUCCESS
    assert mem.read(base + P + 8, 11) == b"still there"
    mr2.close()
    assert [s for s in _usermem.spans() if base <= s[0] < base + 4 * P] == []
    assert mem.read(base + P + 8, 11) == b"still there"
    mem.munmap(base, 4 * P)


def test_an_mr_over_an_mr_s_own_memory_reuses_its_memfd(pair):
    a, b = pair
    inner = MR(b.pd, 100, RW, address=b.mr.buf + 4000)
    (span,) = [s for s in _usermem.spans() if s[0] <= b.mr.buf + 4000 < s[1]]
    assert span[0] == b.mr.buf and span[2] == 2           # b.mr's own memfd, two users
    assert write_to(a, inner.rkey, b.mr.buf + 4000, b"x" * 100) == e.IBV_WC_SUCCESS
    assert b.mr.read(100, 4000) == b"x" * 100
    inner.close()


def test_read_only_memory(pair):
    a, b = pair
    base = anon(1)
    mem.write(base, b"constant", 8, 0)
    ctypes.CDLL(None).mprotect(ctypes.c_void_p(base), P, mmap.PROT_READ)
    with pytest.raises(RnicError) as ei:
        MR(b.pd, 64, RW, address=base)
    assert ei.value.code == errno.EFAULT and "r--" in str(ei.value)
    mr = MR(b.pd, 64, e.IBV_ACCESS_REMOTE_READ, address=base)
    assert maps_at(base).perms == "r--s"                  # protection kept
    assert read_from(a, mr.rkey, base, 8) == b"constant"
    with pytest.raises(RnicError) as ei:                   # granting write needs writable pages
        mr.rereg(e.IBV_REREG_MR_CHANGE_ACCESS, access=e.IBV_ACCESS_LOCAL_WRITE)
    assert ei.value.code == errno.EFAULT
    mr.close()
    assert maps_at(base).perms == "r--p" and mem.read(base, 8) == b"constant"
    mem.munmap(base, P)


def test_bad_addresses(pair):
    _, b = pair
    noaccess = anon(1, prot=mem.PROT_NONE_)
    shared = anon(1, flags=mem.MAP_SHARED_ | mem.MAP_ANONYMOUS_)
    area = anon(4)                 # holes punched last, so that no later mmap fills them
    mem.munmap(area + P, P)
    mem.munmap(area + 3 * P, P)
    cases = [(area + P, 100, errno.EFAULT), (area + 3 * P - 10, 20, errno.EFAULT),
             (area + 10, P, errno.EFAULT), (noaccess, 10, errno.EFAULT),
             (shared, 10, errno.EOPNOTSUPP), (area, 0, errno.EINVAL),
             (1 << 60, 10, errno.EFAULT)]
    for addr, n, code in cases:
        with pytest.raises(RnicError) as ei:
            MR(b.pd, n, e.IBV_ACCESS_LOCAL_WRITE, address=addr)
        assert ei.value.code == code, (hex(addr), n, ei.value)
        assert "Failed to register a MR" in str(ei.value)
    assert "rnic-mr" not in maps_at(area).path             # nothing was moved on failure
    for addr in (area, area + 2 * P, noaccess, shared):
        mem.munmap(addr, P)


def test_daemon_checks_the_segments(pair):
    """reg_mr's memory description is untrusted input of the daemon."""
    _, b = pair
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 2 * P)
    base = {"pd": b.pd.handle, "addr": 0x10000, "length": 100, "access": 1}
    for extra in ({"segments": [[0, 0, P]]},):              # not sealed
        with pytest.raises(RnicError) as ei:
            b.ctx._call("reg_mr", {**base, **extra}, fds=[fd])
        assert ei.value.code == errno.EINVAL and "F_SEAL_SHRINK" in ei.value.msg
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    bad = [{"segments": [[1, 0, P]]}, {"segments": [[0, 100, P]]}, {"segments": [[0, 0, 0]]},
           {"segments": [[0, P, 2 * P]]}, {"segments": [[0, 0, 2 * P]]},
           {"segments": [[0, 0, P]], "start": P}, {"segments": "x"},
           {"segments": [[0, 0, P]], "start": 5}]
    for extra in bad:
        with pytest.raises(RnicError) as ei:
            b.ctx._call("reg_mr", {**base, **extra}, fds=[fd])
        assert ei.value.code == errno.EINVAL, extra
    r, _ = b.ctx._call("reg_mr", {**base, "segments": [[0, P, P]], "start": 0}, fds=[fd])
    b.ctx._call("dereg_mr", {"mr": r["mr"]})
    os.close(fd)


def test_rereg_access(pair):
    a, b = pair
    mr = MR(b.pd, 4096, RW)
    keys = (mr.lkey, mr.rkey)
    assert write_to(a, mr.rkey, mr.buf, b"ok") == e.IBV_WC_SUCCESS
    mr.rereg(e.IBV_REREG_MR_CHANGE_ACCESS, access=e.IBV_ACCESS_LOCAL_WRITE)
    assert (mr.lkey, mr.rkey) == keys                      # keys stay (as mlx5 and rxe)
    assert write_to(a, mr.rkey, mr.buf, b"no") == e.IBV_WC_REM_ACCESS_ERR
    assert mr.read(2, 0) == b"ok"


def test_rereg_pd(pair):
    a, b = pair
    mr = MR(b.pd, 4096, RW)
    pd2 = PD(b.ctx)
    mr.rereg(e.IBV_REREG_MR_CHANGE_PD, pd=pd2)
    with pytest.raises(RnicError) as ei:                   # the MR now holds pd2
        b.ctx._call("dealloc_pd", {"pd": pd2.handle})
    assert ei.value.code == errno.EBUSY
    mr.rereg(e.IBV_REREG_MR_CHANGE_PD, pd=b.pd)
    pd2.close()
    assert write_to(a, mr.rkey, mr.buf, b"back home") == e.IBV_WC_SUCCESS
    assert mr.read(9, 0) == b"back home"
    pd3 = PD(b.ctx)
    mr.rereg(e.IBV_REREG_MR_CHANGE_PD, pd=pd3)             # the QP's PD is not the MR's now
    assert write_to(a, mr.rkey, mr.buf, b"x") == e.IBV_WC_REM_ACCESS_ERR
    pd3.close()                                            # closes the MR first, as pyverbs
    assert mr.closed


def test_rereg_translation(pair):
    a, b = pair
    mr = MR(b.pd, 4096, RW)
    old = mr.buf
    new = mem.posix_memalign(5000, 16)
    mr.rereg(e.IBV_REREG_MR_CHANGE_TRANSLATION, addr=new, length=5000)
    assert (mr.buf, mr.length, mr.is_user_addr) == (new, 5000, True)
    assert write_to(a, mr.rkey, new + 4990, b"0123456789") == e.IBV_WC_SUCCESS
    assert mem.read(new + 4990, 10) == b"0123456789" and mr.read(10, 4990) == b"0123456789"
    assert write_to(a, mr.rkey, old, b"old") == e.IBV_WC_REM_ACCESS_ERR
    mr.close()
    mem.free(new)


def test_rereg_translation_pd_and_access_at_once(pair):
    a, b = pair
    base = anon(2)
    mr = MR(b.pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
    pd2 = PD(b.ctx)
    mr.rereg(e.IBV_REREG_MR_CHANGE_TRANSLATION | e.IBV_REREG_MR_CHANGE_PD
             | e.IBV_REREG_MR_CHANGE_ACCESS, pd=pd2, addr=base + 10, length=P, access=RW)
    assert mr.pd is pd2 and mr.access == RW
    mr.rereg(e.IBV_REREG_MR_CHANGE_PD, pd=b.pd)
    assert write_to(a, mr.rkey, base + 10, b"all three") == e.IBV_WC_SUCCESS
    assert mem.read(base + 10, 9) == b"all three"
    mr.close()
    mem.munmap(base, 2 * P)


def test_rereg_bad_input_leaves_the_mr_alone(pair):
    a, b = pair
    mr = MR(b.pd, 4096, RW)
    gone = anon(1)
    mem.munmap(gone, P)
    foreign = PD(a.ctx)                                    # a PD of another context
    cases = [((0,), {}, errno.EINVAL),
             ((e.IBV_REREG_MR_CHANGE_TRANSLATION,), {"addr": 0, "length": 10}, errno.EINVAL),
             ((e.IBV_REREG_MR_CHANGE_TRANSLATION,), {"addr": gone, "length": 0}, errno.EINVAL),
             ((e.IBV_REREG_MR_CHANGE_PD,), {"access": RW}, errno.EINVAL),
             ((e.IBV_REREG_MR_CHANGE_PD,), {"pd": foreign}, errno.EINVAL),
             ((e.IBV_REREG_MR_CHANGE_ACCESS,), {"access": e.IBV_ACCESS_REMOTE_WRITE},
              errno.EINVAL),
             ((16,), {}, errno.EINVAL),
             ((e.IBV_REREG_MR_KEEP_VALID | e.IBV_REREG_MR_CHANGE_ACCESS,), {"access": RW},
              errno.EOPNOTSUPP),
             ((e.IBV_REREG_MR_CHANGE_TRANSLATION,), {"addr": gone, "length": 10},
              errno.EFAULT)]
    for args, kw, code in cases:
        with pytest.raises(RnicError) as ei:
            mr.rereg(*args, **kw)
        assert ei.value.code == code, (args, kw, ei.value)
        assert "Failed to rereg MR" in str(ei.value)
    assert write_to(a, mr.rkey, mr.buf, b"unchanged") == e.IBV_WC_SUCCESS
    assert mr.read(9, 0) == b"unchanged"
    foreign.close()


def test_fork_child_gets_a_copy(pair):
    a, b = pair
    base = anon(1)
    mem.write(base, b"parent", 6, 0)
    mr = MR(b.pd, 64, RW, address=base)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the child: a private copy
        ok = mem.read(base, 6) == b"parent" and "rnic-mr" not in maps_at(base).path
        mem.write(base, b"child!", 6, 0)
        os.write(wfd, b"1" if ok else b"0")
        os._exit(0)
    os.close(wfd)
    assert os.read(rfd, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(rfd)
    assert mem.read(base, 6) == b"parent"                  # the child's write stayed its own
    assert write_to(a, mr.rkey, base, b"remote") == e.IBV_WC_SUCCESS
    assert mem.read(base, 6) == b"remote"
    mr.close()
    mem.munmap(base, P)

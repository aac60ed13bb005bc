"""Memory regions: ``MR(pd, length, access, address=None)``, as pyverbs.mr.

Without ``address`` the region's memory is a memfd sealed against shrinking and growing (so
that this process cannot make the daemon fault by truncating it), mapped shared here and
registered with rnicd by passing the fd; the daemon maps the same pages. ``buf`` is the
virtual address of this process's mapping (the iova of the region), so SGEs use
``mr.buf + offset`` as in pyverbs.

With ``address`` (memory the program already owns: posix_memalign, mmap, a bytearray...) the
pages are moved into memfds in place (rnic._usermem; docs/memory-registration.md) and the
daemon maps those: the program keeps using its own pointer.
"""
import ctypes
import errno
import mmap
import os

from rnicd.wire.abi import Access, ReregFlags

from . import _usermem
from ._unsupported import verb_classes
from .base import RnicCM
from .device import need_int
from .errors import RnicError, einval

PAGE = mmap.PAGESIZE
# ib_access_writable(): registering with these needs writable pages (else EFAULT)
_WRITE_ACCESS = (Access.IBV_ACCESS_LOCAL_WRITE | Access.IBV_ACCESS_REMOTE_WRITE
                 | Access.IBV_ACCESS_REMOTE_ATOMIC | Access.IBV_ACCESS_MW_BIND)


def _reg_args(pin) -> dict:
    return {"segments": pin.wire_segments(), "start": pin.start}


class MR(RnicCM):
    """A registered memory region: ``buf``, ``length``, ``lkey``, ``rkey``, ``handle``;
    ``mmap`` is a zero-copy view of its bytes (the mmap object for the MR's own memory)."""

    _destroy_verb = "dereg_mr"
    _handle_key = "mr"

    def __init__(self, pd, length=0, access=0, address=None, implicit=False, iova=0,
                 handle=None):
        pd._check_open()
        if handle is not None:
            return self._import(pd, handle, address)
        if implicit or iova:
            raise RnicError(errno.EOPNOTSUPP, "MR: implicit ODP MRs and a chosen iova are "
                            "not supported by rnicd")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise RnicError(errno.EINVAL, f"Failed to register a MR: length must be a "
                            f"positive integer, got {length!r}")
        if isinstance(access, bool) or not isinstance(access, int) or access < 0:
            raise RnicError(errno.EINVAL, f"Failed to register a MR: bad access {access!r}")
        ctx = pd.ctx
        self.fd, self.mmap, self._pin, self._own = -1, None, None, None
        self.is_user_addr = bool(address)
        try:
            if address:
                self.buf = address
            else:
                self._allocate(length)
            self._pin = self._pin_range(self.buf, length, access, "Failed to register a MR")
            try:
                r, _ = ctx._call("reg_mr", {"pd": pd.handle, "addr": self.buf,
                                            "length": length, "access": int(access),
                                            **_reg_args(self._pin)}, fds=self._pin.fds())
            except RnicError as exc:   # pyverbs' wording, which programs match on
                raise RnicError(exc.code, f"Failed to register a MR: {exc.msg}") from None
            self.handle = need_int(r, "mr", "reg_mr")
            self.lkey = need_int(r, "lkey", "reg_mr")
            self.rkey = need_int(r, "rkey", "reg_mr")
        except BaseException:
            self._release_local()
            raise
        if self.is_user_addr:
            self.mmap = self._view(self.buf, length)
        self.length = length
        self.access = int(access)
        self.pd = pd
        self._init_cm(ctx)
        pd.add_ref(self)
        ctx._mrs[self.lkey] = self

    def _import(self, pd, handle, address) -> None:
        """ibv_import_mr: an MR of a shared context (see Context(cmd_fd=)). Its memory is
        the exporter's: read/write reach it at ``address`` (this process's view of it),
        and are refused when it was imported without one."""
        ctx = pd.ctx
        r, _ = ctx._call("import_mr", {"mr": handle})
        self.fd, self.mmap, self._pin, self._own = -1, None, None, None
        self.is_user_addr = address is not None
        self.handle = handle
        self.lkey = need_int(r, "lkey", "import_mr")
        self.rkey = need_int(r, "rkey", "import_mr")
        self.length = need_int(r, "length", "import_mr")
        self.access = need_int(r, "access", "import_mr")
        self.buf = address if address is not None else need_int(r, "addr", "import_mr")
        if address is not None:
            self.mmap = self._view(address, self.length)
        self.pd = pd
        self._init_cm(ctx)
        pd.add_ref(self)
        ctx._mrs[self.lkey] = self

    def _allocate(self, length: int) -> None:
        """The MR's own memory: a sealed memfd mapped shared (no copy needed)."""
        size = (length + PAGE - 1) // PAGE * PAGE
        self.fd = _usermem._new_memfd(size)
        self.mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        anchor = ctypes.c_char.from_buffer(self.mmap)
        self.buf = ctypes.addressof(anchor)
        del anchor   # the export would keep mmap.close() from working
        self._own = _usermem.own_memory(self.fd, self.buf, size)

    @staticmethod
    def _pin_range(addr, length, access, what):
        try:
            return _usermem.pin(addr, length, bool(int(access) & _WRITE_ACCESS))
        except RnicError as exc:
            raise RnicError(exc.code, f"{what}: {exc.msg}") from None

    @staticmethod
    def _view(addr: int, length: int) -> memoryview:
        return memoryview((ctypes.c_char * length).from_address(addr)).cast("B")

    def _range(self, length, offset, what: str) -> None:
        self._check_open()
        for name, v in (("length", length), ("offset", offset)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise einval(f"MR.{what}: {name} must be a non-negative integer, got {v!r}")
        if offset + length > self.length:
            raise einval(f"MR.{what}: [{offset}, {offset + length}) is outside the region "
                         f"of {self.length} bytes")
        if self.mmap is None:
            raise einval(f"MR.{what}: an MR imported without an address has no memory here")

    def write(self, data, length=None, offset=0) -> None:
        """Copy ``length`` bytes of ``data`` (bytes-like or str) to ``offset``."""
        if isinstance(data, str):
            data = data.encode()
        data = memoryview(data).cast("B")
        if length is None:
            length = len(data)
        self._range(length, offset, "write")
        if length > len(data):
            raise einval(f"MR.write: length {length} exceeds the {len(data)} bytes of data")
        self.mmap[offset:offset + length] = data[:length]

    def read(self, length, offset=0) -> bytes:
        """``length`` bytes from ``offset``."""
        self._range(length, offset, "read")
        return bytes(self.mmap[offset:offset + length])

    def rereg(self, flags, pd=None, addr=0, length=0, access=0) -> None:
        """ibv_rereg_mr: change the translation (``addr``, ``length``), the PD and/or the
        access flags; lkey and rkey stay the same. On an input error the MR is unchanged;
        on a command error it must not be used (ibv_rereg_mr(3))."""
        self._check_open()
        what = "Failed to rereg MR"
        flags = int(flags)

        def bad(msg, code=errno.EINVAL):
            return RnicError(code, f"{what}: IBV_REREG_MR_ERR_INPUT: {msg}")
        if flags <= 0 or flags & ~int(ReregFlags.IBV_REREG_MR_FLAGS_SUPPORTED):
            raise bad(f"flags {flags:#x}: use IBV_REREG_MR_CHANGE_TRANSLATION, _CHANGE_PD, "
                      "_CHANGE_ACCESS")
        if flags & ReregFlags.IBV_REREG_MR_KEEP_VALID:
            raise bad("IBV_REREG_MR_KEEP_VALID is not supported", errno.EOPNOTSUPP)
        trans = flags & ReregFlags.IBV_REREG_MR_CHANGE_TRANSLATION
        if trans and (not length or not addr):
            raise bad("IBV_REREG_MR_CHANGE_TRANSLATION needs addr and length")
        if access and not flags & ReregFlags.IBV_REREG_MR_CHANGE_ACCESS:
            raise bad("access given without IBV_REREG_MR_CHANGE_ACCESS")
        args, fds = {"mr": self.handle, "flags": flags}, []
        if flags & ReregFlags.IBV_REREG_MR_CHANGE_PD:
            if pd is None or getattr(pd, "ctx", None) is not self._ctx:
                raise bad("IBV_REREG_MR_CHANGE_PD needs a PD of this MR's context")
            pd._check_open()
            args["pd"] = pd.handle
        new_access = int(access) if flags & ReregFlags.IBV_REREG_MR_CHANGE_ACCESS \
            else self.access
        if flags & ReregFlags.IBV_REREG_MR_CHANGE_ACCESS:
            args["access"] = new_access
        new_pin = None
        if trans:
            new_pin = self._pin_range(addr, length, new_access, f"{what}: "
                                      "IBV_REREG_MR_ERR_INPUT")
            args.update(addr=addr, length=length, **_reg_args(new_pin))
            fds = new_pin.fds()
        elif new_access & _WRITE_ACCESS and not self.access & _WRITE_ACCESS:
            # the pages must be writable now (ibv_reg_mr's pinning rule)
            check = self._pin_range(self.buf, self.length, new_access,
                                    f"{what}: IBV_REREG_MR_ERR_INPUT")
            _usermem.unpin(check)
        try:
            r, _ = self._ctx._call("rereg_mr", args, fds=fds)
        except RnicError as exc:
            _usermem.unpin(new_pin)
            raise RnicError(exc.code, f"{what}: IBV_REREG_MR_ERR_CMD: {exc.msg}") from None
        lkey, rkey = need_int(r, "lkey", "rereg_mr"), need_int(r, "rkey", "rereg_mr")
        self._ctx._mrs.epoch += 1       # WRs checked against the old MR check again
        if lkey != self.lkey:
            if self._ctx._mrs.get(self.lkey) is self:
                del self._ctx._mrs[self.lkey]
            self._ctx._mrs[lkey] = self
        self.lkey, self.rkey = lkey, rkey
        if trans:
            old_pin, self._pin = self._pin, new_pin
            _usermem.unpin(old_pin)
            self._release_own()          # pyverbs frees the MR's own buffer here too
            self.buf, self.length, self.is_user_addr = addr, length, True
            self.mmap = self._view(addr, length)
        if flags & ReregFlags.IBV_REREG_MR_CHANGE_PD:
            self.pd._children.discard(self)
            self.pd = pd
            pd.add_ref(self)
        self.access = new_access

    def _release_own(self) -> None:
        if self._own is not None and self.mmap is not None:
            try:
                self.mmap.close()
            except BufferError:
                pass   # a memoryview of it is alive; the mapping goes with it
        self._own = None
        self.mmap = None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _release_local(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None and ctx._mrs.get(getattr(self, "lkey", None)) is self:
            del ctx._mrs[self.lkey]
        pin, self._pin = self._pin, None
        self._release_own()
        _usermem.unpin(pin)

    def __repr__(self) -> str:
        if self._closed:
            return "MR(closed)"
        return (f"MR(buf={self.buf:#x}, length={self.length}, lkey={self.lkey:#x}, "
                f"rkey={self.rkey:#x})")


# Not offered yet: device memory and dma-buf MRs.
verb_classes(globals(), "device memory", "DMMR")
verb_classes(globals(), "dma-buf memory", "DmaBufMR")

from .mw import MW, MWBind, MWBindInfo  # noqa: E402,F401  (memory windows: rnic/mw.py)

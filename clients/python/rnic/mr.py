"""Memory regions: ``MR(pd, length, access)``, as pyverbs.mr.

The memory is a memfd sealed against shrinking and growing (so that this process cannot
make the daemon fault by truncating it), mapped shared here and registered with rnicd by
passing the fd; the daemon maps the same pages. ``buf`` is the virtual address of this
process's mapping (the iova of the region), so SGEs use ``mr.buf + offset`` as in pyverbs.
"""
import ctypes
import errno
import fcntl
import mmap
import os

from ._unsupported import verb_classes
from .base import RnicCM
from .device import need_int
from .errors import RnicError, einval

PAGE = 4096


class MR(RnicCM):
    """A registered memory region: ``buf``, ``length``, ``lkey``, ``rkey``, ``handle``;
    ``mmap`` is the mapping itself (zero-copy access with memoryview)."""

    _destroy_verb = "dereg_mr"
    _handle_key = "mr"

    def __init__(self, pd, length=0, access=0, address=None, implicit=False, iova=0,
                 handle=None):
        pd._check_open()
        if handle is not None:
            return self._import(pd, handle, address)
        if address is not None or implicit or iova:
            raise RnicError(errno.EOPNOTSUPP, "MR: registering caller memory (address=), "
                            "implicit ODP MRs and a chosen iova are not supported by rnicd; "
                            "use the memory of the MR itself (mr.buf, mr.mmap)")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise einval(f"MR length must be a positive integer, got {length!r}")
        ctx = pd.ctx
        size = (length + PAGE - 1) // PAGE * PAGE
        self.fd, self.mmap = -1, None
        try:
            self.fd = os.memfd_create("rnic-mr", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            self.mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            anchor = ctypes.c_char.from_buffer(self.mmap)
            self.buf = ctypes.addressof(anchor)
            del anchor   # the export would keep mmap.close() from working
            try:
                r, _ = ctx._call("reg_mr", {"pd": pd.handle, "addr": self.buf,
                                            "length": length, "access": int(access),
                                            "offset": 0}, fds=[self.fd])
            except RnicError as exc:   # pyverbs' wording, which programs match on
                raise RnicError(exc.code, f"Failed to register a MR: {exc.msg}") from None
            self.handle = need_int(r, "mr", "reg_mr")
            self.lkey = need_int(r, "lkey", "reg_mr")
            self.rkey = need_int(r, "rkey", "reg_mr")
        except BaseException:
            self._release_local()
            raise
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
        self.fd, self.mmap = -1, None
        self.handle = handle
        self.lkey = need_int(r, "lkey", "import_mr")
        self.rkey = need_int(r, "rkey", "import_mr")
        self.length = need_int(r, "length", "import_mr")
        self.access = need_int(r, "access", "import_mr")
        self.buf = address if address is not None else need_int(r, "addr", "import_mr")
        if address is not None:
            self.mmap = memoryview((ctypes.c_char * self.length).from_address(address)).cast("B")
        self.pd = pd
        self._init_cm(ctx)
        pd.add_ref(self)
        ctx._mrs[self.lkey] = self

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

    def _release_local(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None and ctx._mrs.get(getattr(self, "lkey", None)) is self:
            del ctx._mrs[self.lkey]
        if self.mmap is not None:
            try:
                if isinstance(self.mmap, memoryview):
                    self.mmap.release()          # an imported MR's view (not a mapping)
                else:
                    self.mmap.close()
            except BufferError:
                pass   # a memoryview of it is alive; the mapping goes with it
            self.mmap = None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        if self._closed:
            return "MR(closed)"
        return (f"MR(buf={self.buf:#x}, length={self.length}, lkey={self.lkey:#x}, "
                f"rkey={self.rkey:#x})")


# Not offered yet: device memory and dma-buf MRs.
verb_classes(globals(), "device memory", "DMMR")
verb_classes(globals(), "dma-buf memory", "DmaBufMR")

from .mw import MW, MWBind, MWBindInfo  # noqa: E402,F401  (memory windows: rnic/mw.py)

"""The device context: ``Context(name=None, socket=None)``, as pyverbs.device.

One Context is one control connection to rnicd (like an open uverbs file): closing it, or
the process exiting, destroys everything created through it. Besides the verbs of
pyverbs it offers rnicd's extensions: get_counters, set_fault, get_fault, get_objects.
"""
import errno
import os
import struct
import weakref

from rnicd.wire import ctl
from rnicd.wire.abi import EventType

from ._conn import Connection, _close_fds
from ._device_ex import (  # noqa: F401  (pyverbs.device's names)
    CQModerationCaps,
    Device,
    DeviceAttrEx,
    GIDEntry,
    ODPCaps,
    PacketPacingCaps,
    PCIAtomicCaps,
    RSSCaps,
    TMCaps,
    TSOCaps,
    sysfs_gid_type,
)
from ._strings import (  # noqa: F401  (pyverbs.device's translators)
    guid_format,
    guid_to_hex,
    phys_state_to_str,
    port_state_to_str,
    speed_to_str,
    str_from_flags,
    translate_device_caps,
    translate_event_type,
    translate_link_layer,
    translate_mtu,
    translate_node_type,
    translate_port_cap_flags,
    translate_transport_type,
    width_to_str,
)
from ._unsupported import AttrHolder, not_offered, verb_classes
from .addr import GID
from .base import RnicCM, close_children
from .errors import RnicError

_DOORBELL = struct.pack("=Q", 1)


class MRTable(weakref.WeakValueDictionary):
    """A context's open MRs by lkey. ``epoch`` moves whenever an entry is set or deleted,
    which forgets every work request's remembered check (rnic._post). (A check holds its MRs,
    so none of them can vanish from the table by garbage collection alone.)"""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def __setitem__(self, key, value) -> None:
        self.epoch += 1
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.epoch += 1
        super().__delitem__(key)


class _Attrs:
    """Attributes built from a reply map (untrusted: only identifier-like str keys)."""

    _aliases: dict = {}

    def __init__(self, d: dict):
        for k, v in d.items():
            if isinstance(k, str) and k.isidentifier() and not k.startswith("_"):
                setattr(self, k, v)
        for alias, name in self._aliases.items():
            if name in self.__dict__ and alias not in self.__dict__:
                setattr(self, alias, self.__dict__[name])

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({body})"


class DeviceAttr(_Attrs):
    """struct ibv_device_attr (pyverbs also names fw_ver ``fw_version``, atomic_cap
    ``atomic_caps`` and max_raw_ipv6_qp ``max_raw_ipv6_qps``; both spellings work)."""

    _aliases = {"fw_version": "fw_ver", "atomic_caps": "atomic_cap",
                "max_raw_ipv6_qps": "max_raw_ipv6_qp"}


class AllocDmAttr(AttrHolder):
    """struct ibv_alloc_dm_attr: ``AllocDmAttr(length, log_align_req=0, comp_mask=0)``."""

    _fields = ("length", "log_align_req", "comp_mask")

    def __init__(self, length=0, log_align_req=0, comp_mask=0):
        super().__init__(length, log_align_req, comp_mask)


verb_classes(globals(), "device memory (max_dm_size is 0)", "DM")


def _peer_path(cmd_fd: int) -> str:
    """The daemon socket a context's command fd is connected to."""
    import socket as _socket
    try:
        with _socket.socket(fileno=os.dup(cmd_fd)) as s:
            path = s.getpeername()
    except OSError as exc:
        raise RnicError(errno.EBADF, f"Context(cmd_fd={cmd_fd}): not an rnic command socket: "
                        f"{exc}") from None
    if not isinstance(path, str) or not path:
        raise RnicError(errno.EBADF, f"Context(cmd_fd={cmd_fd}): not connected to an rnicd")
    return path


def get_device_list(socket=None) -> list:
    """ibv_get_device_list: the device of the rnicd that $RNIC_SOCKET (or the default
    socket) reaches, as a one-entry list; empty when no rnicd answers."""
    try:
        ctx = Context(socket=socket)
    except RnicError:
        return []
    with ctx:
        a = ctx.query_device()
        return [Device(ctx.name, a.node_guid, a.node_type, a.transport_type, 0)]


class PortAttr(_Attrs):
    """struct ibv_port_attr."""


class AsyncEvent:
    """An asynchronous event (struct ibv_async_event): ``event_type`` (IBV_EVENT_*) and,
    where relevant, ``qp``/``qp_num``, ``cq``, ``srq`` (the objects when this context owns
    them, else the handles) and ``port_num``. ``raw`` is the event map as received."""

    def __init__(self, ctx, ev: dict):
        self.raw = ev
        t = ev.get("type")
        try:
            self.event_type = EventType(t)
        except ValueError:
            self.event_type = t
        self.qp = ctx._lookup("qp", ev.get("qp"))
        self.cq = ctx._lookup("cq", ev.get("cq"))
        self.srq = ctx._lookup("srq", ev.get("srq"))
        qpn = ev.get("qp_num")
        if qpn is None and self.qp is not None and hasattr(self.qp, "qp_num"):
            qpn = self.qp.qp_num
        if self.qp is None and qpn is not None:
            qp = ctx._lookup("qpn", qpn)
            self.qp = qp if qp is not qpn else None
        self.qp_num = qpn
        self.port_num = ev.get("port_num", ev.get("port"))

    def ack(self) -> None:
        """ibv_ack_async_event: nothing to do with rnicd (kept for ported code)."""

    def __repr__(self) -> str:
        name = getattr(self.event_type, "name", self.event_type)
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("qp_num", "port_num")
                        if getattr(self, k) is not None)
        return f"AsyncEvent({name}{extra})"


def need_int(r: dict, key: str, method: str) -> int:
    v = r.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RnicError(errno.EPROTO, f"{method}: the reply from rnicd lacks an integer {key!r}")
    return v


class Context(RnicCM):
    """An open rnicd device: ``Context(name=None, socket=None)``.

    ``name`` picks a device (None = the daemon's first); ``socket`` the daemon's Unix socket
    (default: $RNIC_SOCKET, else $XDG_RUNTIME_DIR/rnicd/rnicd.sock, else
    /run/rnicd/rnicd.sock)."""

    def __init__(self, name=None, socket=None, cmd_fd=None, **kwargs):
        if isinstance(name, bytes):
            name = name.decode()
        self._cmd_fd_imported = None
        if cmd_fd is not None:         # ibv_import_device: join the context behind cmd_fd
            socket = _peer_path(cmd_fd)
        self._conn = Connection(socket, sock=kwargs.get("_sock"))
        try:
            own = self._conn._sock.fileno()   # proof of this context, for a later import
            if cmd_fd is not None:
                r, fds = self._conn.call("import_context", {"version": ctl.PROTOCOL_VERSION},
                                         fds=[cmd_fd, own])
                self._cmd_fd_imported = cmd_fd   # the context owns it now, as libibverbs'
            else:
                r, fds = self._conn.call("hello", {"version": ctl.PROTOCOL_VERSION,
                                                   "device": name, "pid": os.getpid()},
                                         fds=[own])
            # a doorbell per engine (docs/control-protocol.md); an older rnicd sends one
            idxs = r.get("doorbell_fds", [r.get("doorbell_fd", 0)])
            if not isinstance(idxs, list) or not idxs or not all(
                    isinstance(i, int) and 0 <= i < len(fds) for i in idxs) \
                    or len(set(idxs)) != len(idxs):
                _close_fds(fds)
                raise RnicError(errno.EPROTO, "hello: rnicd sent no doorbell eventfd")
            self._doorbell_fds = [fds[i] for i in idxs]
            _close_fds([fd for i, fd in enumerate(fds) if i not in idxs])
        except BaseException:
            self._conn.close()
            raise
        self.name = r.get("device", name)
        self.version = r.get("version")
        n = r.get("num_comp_vectors", 1)
        self._num_comp_vectors = n if isinstance(n, int) and not isinstance(n, bool) else 1
        self._tables = {k: weakref.WeakValueDictionary() for k in ("qp", "qpn", "cq", "srq")}
        self._mrs = MRTable()                       # lkey -> MR
        self._closing = False
        self._children = weakref.WeakSet()
        self._closed = False

    @property
    def ctx(self):
        return self

    @property
    def cmd_fd(self) -> int:
        """The command socket: dup it and pass it to Context(cmd_fd=...), here or in another
        process, to share this context (ibv_import_device)."""
        self._check_open()
        return self._conn._sock.fileno()

    # ---- plumbing used by the other modules --------------------------------------------
    def _call(self, method: str, args: dict | None = None, fds=(), nfds: int = 0):
        """One verb; the reply must carry exactly ``nfds`` descriptors."""
        self._check_open()
        r, rfds = self._conn.call(method, args, fds)
        if len(rfds) != nfds:
            _close_fds(rfds)
            raise RnicError(errno.EPROTO, f"{method}: rnicd sent {len(rfds)} file "
                            f"descriptor(s), expected {nfds}")
        return r, rfds

    def _destroy(self, method: str, args: dict) -> None:
        """Destroy a daemon object, unless the connection is going away anyway."""
        if self._closing or self._conn.closed:
            return
        try:
            self._conn.call(method, args)
        except RnicError as exc:
            if exc.code == errno.ENOENT or self._conn._dead is not None:
                return   # already gone / the daemon dropped everything with the connection
            raise

    def _defer_destroy(self, method: str, args: dict) -> None:
        if not (self._closing or self._conn.closed):
            self._conn.defer(method, args)

    def _register(self, kind: str, handle: int, obj) -> None:
        self._tables[kind][handle] = obj

    def _lookup(self, kind: str, handle):
        if isinstance(handle, bool) or not isinstance(handle, int):
            return handle   # absent (None) or not a handle: left as the daemon sent it
        return self._tables[kind].get(handle, handle)

    def _mr_by_lkey(self, lkey: int):
        mr = self._mrs.get(lkey)
        return None if mr is None or mr.closed else mr

    def _mr_by_addr(self, addr: int, length: int):
        for mr in list(self._mrs.values()):
            if not mr.closed and mr.buf <= addr and addr + length <= mr.buf + mr.length:
                return mr
        return None

    def _ring_doorbell(self, ring=None) -> None:
        """Tell the daemon new WQEs wait: 8 bytes to the doorbell eventfd of the engine that
        serves the ring (its header names it), unless the daemon flagged (``polling`` in the
        ring header) that it is polling anyway; every doorbell when the ring names none."""
        fds = self._doorbell_fds
        if ring is not None:
            if ring.polling():
                return
            k = ring.hdr.doorbell
            if 0 < k <= len(fds):
                fds = (fds[k - 1],)
        for fd in fds:
            try:
                os.write(fd, _DOORBELL)
            except BlockingIOError:
                pass   # counter saturated: the daemon has a wake-up pending anyway
            except OSError as exc:
                raise RnicError(exc.errno or errno.EIO, f"ringing the doorbell failed: {exc}"
                                ) from None

    # ---- verbs ---------------------------------------------------------------------------
    def query_device(self) -> DeviceAttr:
        r, _ = self._call("query_device")
        return DeviceAttr(r)

    def query_device_ex(self, comp_mask: int = 0) -> DeviceAttrEx:
        """ibv_query_device_ex: ``orig_attr`` plus the extended capabilities."""
        r, _ = self._call("query_device_ex")
        return DeviceAttrEx(r, DeviceAttr)

    @property
    def num_comp_vectors(self) -> int:
        """How many completion vectors a CQ may choose from (0..num_comp_vectors-1)."""
        return self._num_comp_vectors

    def query_port(self, port_num: int = 1) -> PortAttr:
        try:
            r, _ = self._call("query_port", {"port": port_num})
        except RnicError as exc:         # pyverbs' words, which programs match
            raise RnicError(exc.code, f"Failed to query port {port_num}: {exc.msg}") from None
        return PortAttr(r)

    def query_gid(self, port_num: int = 1, index: int = 0) -> GID:
        r, _ = self._call("query_gid", {"port": port_num, "index": index})
        raw = r.get("gid")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 16:
            raise RnicError(errno.EPROTO, "query_gid: rnicd's reply lacks a 16-byte gid")
        gid = GID(bytes(raw))
        gid.gid_type = r.get("gid_type")
        return gid

    def query_gid_type(self, port_num: int, index: int) -> int:
        """ibv_query_gid_type: IBV_GID_TYPE_SYSFS_ROCE_V2 (every rnicd GID is RoCEv2)."""
        return sysfs_gid_type(self.query_gid(port_num, index).gid_type)

    def query_gid_ex(self, port_num: int, gid_index: int, flags: int = 0,
                     skip_invalid: bool = False) -> GIDEntry:
        """ibv_query_gid_ex: one GID table entry with its type and netdev; an empty entry
        is ENODATA, as libibverbs has it (None with skip_invalid, for query_gid_table)."""
        if flags:
            raise RnicError(errno.EINVAL, "query_gid_ex: flags must be 0")
        r, _ = self._call("query_gid", {"port": port_num, "index": gid_index})
        raw = r.get("gid")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 16:
            raise RnicError(errno.EPROTO, "query_gid: rnicd's reply lacks a 16-byte gid")
        if not any(raw):
            if skip_invalid:
                return None
            raise RnicError(errno.ENODATA, f"Failed to query gid entry {gid_index} of port "
                            f"{port_num}: the entry is empty")
        return GIDEntry(bytes(raw), gid_index, port_num, r.get("gid_type", 0),
                        r.get("ndev_ifindex", 0) or 0)

    def query_gid_table(self, max_entries: int, flags: int = 0) -> list:
        """ibv_query_gid_table: the valid entries of every port, at most max_entries; as
        libibverbs, a table with more valid entries is -EINVAL (error_code -22)."""
        if flags:
            raise RnicError(errno.EINVAL, "query_gid_table: flags must be 0", -errno.EINVAL)
        n = self.query_port(1).gid_tbl_len
        entries = [g for g in (self.query_gid_ex(1, i, skip_invalid=True) for i in range(n))
                   if g is not None]
        if len(entries) > max_entries:
            raise RnicError(errno.EINVAL, f"Failed to query gid tables of the device: "
                            f"{len(entries)} valid entries, max_entries={max_entries}",
                            -errno.EINVAL)
        return entries

    def query_pkey(self, port_num: int, index: int) -> int:
        """ibv_query_pkey: RoCE has the one default P_Key 0xffff."""
        if port_num != 1 or index != 0:
            raise RnicError(errno.EINVAL, f"query_pkey: port {port_num} index {index} is "
                            "not in the table (one port, one P_Key)")
        return 0xFFFF

    def query_rt_values_ex(self, comp_mask: int = 0):
        """ibv_query_rt_values_ex: no hardware clock (hca_core_clock is 0)."""
        raise not_offered("query_rt_values_ex (a hardware clock)")

    def get_async_event(self, timeout: float | None = None) -> AsyncEvent | None:
        """Block until the next asynchronous event (None if ``timeout`` seconds pass)."""
        self._check_open()
        ev = self._conn.next_event(timeout)
        return None if ev is None else AsyncEvent(self, ev)

    async def async_event(self) -> AsyncEvent:
        """Await the next asynchronous event (asyncio; one awaiting task at a time)."""
        self._check_open()
        return AsyncEvent(self, await self._conn.next_event_async())

    # ---- rnicd extensions ------------------------------------------------------------------
    def get_counters(self, qp=None) -> dict:
        """Named counters (rxe's names) of the device, or of one QP (object or handle)."""
        args = {}
        if qp is not None:
            args["qp"] = getattr(qp, "handle", qp)
        r, _ = self._call("get_counters", args)
        return dict(r.get("counters", {}))

    def set_fault(self, **spec) -> dict:
        """Fault injection: drop, dup, reorder, delay, corrupt (rates 0..1), delay_ms, seed.
        Returns the spec now in force."""
        r, _ = self._call("set_fault", {"spec": spec})
        return dict(r.get("spec", {}))

    def get_fault(self) -> dict:
        r, _ = self._call("get_fault")
        return dict(r.get("spec", {}))

    def get_objects(self) -> dict:
        """Daemon-wide object counts: pds, mrs, cqs, qps, srqs, channels, contexts; and
        cm_listening, the rdma_cm ports listened on."""
        r, _ = self._call("get_objects")
        return dict(r)

    # ---- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close every object of this context, then the connection (idempotent). The daemon
        destroys everything of a closed connection, so the children only unmap locally."""
        if self._closed:
            return
        self._closing = True
        try:
            close_children(self._children)
        finally:
            self._closed = True
            self._release_local()

    def _release_local(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        for fd in getattr(self, "_doorbell_fds", None) or ():
            try:
                os.close(fd)
            except OSError:
                pass
        self._doorbell_fds = []
        for name in ("_cmd_fd_imported",):
            fd = getattr(self, name, None)
            if fd is not None and fd >= 0:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __del__(self):
        if not self._closed:
            self._closing = True
            self._closed = True
            try:
                self._release_local()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"Context(name={self.name!r}, socket={self._conn.path!r})"

"""Connection management with rdma_cm's model, in pyverbs.cmid's shape: ``AddrInfo``,
``ConnParam``, ``CMEventChannel``, ``CMEvent``, ``CMID``.

The CM protocol runs in the daemon (as ib_cm runs in the kernel under librdmacm): this module
asks it to listen, connect, accept, reject and disconnect, and reads its events. On the wire
the connection is made of IB CM MADs to QP1 (docs/connection-management.md).

Two ways to use it, as in pyverbs:

- synchronous: ``CMID(creator=AddrInfo(...), qp_init_attr=...)``; ``connect()``,
  ``accept()``, ``disconnect()`` return once the connection is established or closed and
  ``get_request()`` waits for a connection request;
- asynchronous: ``CMID(creator=CMEventChannel())``; every call returns at once and progress
  arrives as ``CMEvent`` objects: ``channel.get_cm_event()``, or
  ``await channel.get_cm_event_async()`` under asyncio.

Address resolution asks the kernel's routing table (pyroute2) which interface reaches the
destination; it must be the netdev the device is bound to, and the source is the device's
GID 0 (the address rnicd sends from).

Port spaces: RDMA_PS_TCP and RDMA_PS_IB connect RC QPs; RDMA_PS_UDP ids resolve the peer's
UD QP with SIDR (connect gives ESTABLISHED with ``UDParam(event)``: its QPN, Q_Key and an
address handle). A connection may also use an external QP, not created on the id:
``ConnParam(qp_num=...)``, ``init_qp_attr()`` for its transitions, ``establish()``.
"""
from __future__ import annotations

import collections
import errno
import time
import weakref

from rnicd.wire.abi import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_SEND_SIGNALED,
    RC_ACCESS,
    QPState,
    QPType,
    WROpcode,
)
from rnicd.wire.cma import (
    RAI_PASSIVE,
    RDMA_PS_IB,
    RDMA_PS_IPOIB,
    RDMA_PS_TCP,
    RDMA_PS_UDP,
    RDMA_UDP_QKEY,
    UD_PORT_SPACES,
    CMEventType,
)

from ._cm_addr import AddrInfo, _port_space, qp_type_of, resolve_source
from .addr import AHAttr
from .cq import CQ
from .device import Context
from .errors import RnicError, einval
from .mr import MR
from .pd import PD
from .qp import ECE, QP, QPAttr, QPInitAttr
from .wr import SGE, RecvWR, SendWR

__all__ = ["AddrInfo", "ConnParam", "CMEventChannel", "CMEvent", "CMID", "JoinMCAttrEx",
           "OffloadTemplate", "UDParam", "CMEventType", "RDMA_PS_TCP", "RDMA_PS_UDP",
           "RDMA_PS_IB", "RDMA_PS_IPOIB", "RAI_PASSIVE", "RDMA_UDP_QKEY"]

E = CMEventType
# how long a synchronous call waits for the daemon's CM: a REQ/DREQ gives up after ~4.3 s
SYNC_TIMEOUT = 30.0


# ---- parameters ---------------------------------------------------------------------------
class UDParam:
    """struct rdma_ud_param (what SIDR resolved): ``ah_attr`` (an AHAttr for the peer),
    ``qp_num``, ``qkey``. ``UDParam(cm_event)`` reads them from the ESTABLISHED event of a
    UD (RDMA_PS_UDP) id."""

    def __init__(self, cm_event=None):
        src = getattr(cm_event, "ud_param", None)
        src = src if isinstance(src, dict) else {}
        ah = src.get("ah_attr")
        self._ah = AHAttr.from_dict(ah) if isinstance(ah, dict) else None
        self.qp_num = src.get("qp_num", 0)
        self.qkey = src.get("qkey", 0)

    @property
    def ah_attr(self) -> AHAttr | None:
        """A fresh AHAttr each time, as pyverbs builds one per access."""
        return None if self._ah is None else AHAttr.from_dict(self._ah.to_dict())

    def __repr__(self) -> str:
        return f"UDParam(qp_num={self.qp_num:#x}, qkey={self.qkey:#x}, ah_attr={self._ah!r})"


class JoinMCAttrEx:
    """struct rdma_cm_join_mc_attr_ex (multicast is not offered: joining answers
    EOPNOTSUPP)."""

    def __init__(self, addr=None, comp_mask=0, join_flags=0):
        self.addr = addr
        self.comp_mask = comp_mask
        self.join_flags = join_flags


class ConnParam:
    """struct rdma_conn_param. ``private_data`` (an rnic addition to pyverbs' signature)
    travels in the REQ (at most 56 bytes), REP (196) or REJ (148); for UD ids in the
    SIDR_REQ (180) or SIDR_REP (136). ``qp_num`` and ``srq`` describe an external QP when
    the id has none (as rdma_connect/rdma_accept read them)."""

    def __init__(self, resources=1, depth=1, flow_control=0, retry=5, rnr_retry=5, srq=0,
                 qp_num=0, private_data=b""):
        self.responder_resources, self.initiator_depth = resources, depth
        self.flow_control, self.retry_count, self.rnr_retry_count = flow_control, retry, \
            rnr_retry
        self.srq, self.qpn, self.private_data = srq, qp_num, bytes(private_data)

    def to_dict(self) -> dict:
        return {"responder_resources": self.responder_resources,
                "initiator_depth": self.initiator_depth, "flow_control": self.flow_control,
                "retry_count": self.retry_count, "rnr_retry_count": self.rnr_retry_count,
                "qp_num": self.qpn, "srq": int(bool(self.srq))}


class OffloadTemplate:
    """What the daemon needs to complete incoming connections by itself (listen(offload=)):
    each connection gets a QP made from ``qp_init_attr`` (its CQs and ``pd``), ``recv_count``
    receives of ``recv_length`` bytes pre-posted from ``recv_mr`` (consecutive slices from
    ``recv_offset``; wr_id = the buffer's address), and is accepted with ``conn_param``.
    Notifications: one per ``notify_max`` connections, or ``notify_usec`` after the first."""

    def __init__(self, pd, qp_init_attr: QPInitAttr, recv_mr: MR | None = None,
                 recv_length: int = 0, recv_count: int = 0, recv_offset: int = 0,
                 conn_param: ConnParam | None = None, notify_max: int = 64,
                 notify_usec: int = 50000):
        if qp_init_attr.send_cq is None or qp_init_attr.recv_cq is None:
            raise einval("OffloadTemplate: qp_init_attr needs send_cq and recv_cq")
        self.pd, self.qp_init_attr, self.recv_mr = pd, qp_init_attr, recv_mr
        self.recv_length, self.recv_count, self.recv_offset = recv_length, recv_count, \
            recv_offset
        self.conn_param = conn_param or ConnParam()
        self.notify_max, self.notify_usec = notify_max, notify_usec

    def to_dict(self) -> dict:
        a = self.qp_init_attr
        d = {"qp_init": {"pd": self.pd.handle, "send_cq": a.send_cq.handle,
                         "recv_cq": a.recv_cq.handle, "cap": a.cap.to_dict(),
                         "sq_sig_all": int(bool(a.sq_sig_all))},
             "conn_param": self.conn_param.to_dict(),
             "private_data": self.conn_param.private_data,
             "notify_max": self.notify_max, "notify_usec": self.notify_usec}
        if self.recv_mr is not None and self.recv_count:
            d["recv"] = {"mr": self.recv_mr.handle, "offset": self.recv_offset,
                         "length": self.recv_length, "count": self.recv_count}
        return d


# ---- events -------------------------------------------------------------------------------
class CMEventChannel:
    """rdma_event_channel: where a context's CM events arrive. ``CMEventChannel(context=None,
    socket=None)`` opens a Context on the daemon unless one is given. Its ids share one PD
    unless given another (librdmacm's per-device PD), closed with the channel."""

    def __init__(self, context: Context | None = None, socket=None):
        self._own_ctx = context is None
        self.context = context if context is not None else Context(socket=socket)
        self._ids: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._stash = collections.deque()   # events read while waiting for another id
        self._closed = False
        self._pd: PD | None = None

    def _default_pd(self) -> PD:
        if self._pd is None or self._pd.closed:
            self._pd = PD(self.context)
        return self._pd

    def _post_local(self, raw: dict) -> None:
        """An event this library produces itself (address and route resolution)."""
        self._stash.append(raw)

    def _pull(self, timeout: float | None) -> dict | None:
        if self._stash:
            return self._stash.popleft()
        return self.context._conn.next_event(timeout, "cm")

    def get_cm_event(self, timeout: float | None = None) -> "CMEvent | None":
        """The next event (blocking; None after ``timeout`` seconds)."""
        raw = self._pull(timeout)
        return None if raw is None else CMEvent(self, _raw=raw)

    async def get_cm_event_async(self) -> "CMEvent":
        """Await the next event without blocking the asyncio loop."""
        if self._stash:
            return CMEvent(self, _raw=self._stash.popleft())
        return CMEvent(self, _raw=await self.context._conn.next_event_async("cm"))

    def _wait(self, match, timeout: float | None, what: str) -> "CMEvent":
        """Synchronous calls: the next event whose raw body satisfies `match` (None timeout:
        wait for ever); other events wait in the stash for get_cm_event()."""
        for raw in list(self._stash):
            if match(raw):
                self._stash.remove(raw)
                return CMEvent(self, _raw=raw)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            raw = None if left is not None and left <= 0 else \
                self.context._conn.next_event(left, "cm")
            if raw is None:
                raise RnicError(errno.ETIMEDOUT, f"no {what} within {timeout:g} s")
            if match(raw):
                return CMEvent(self, _raw=raw)
            self._stash.append(raw)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pd is not None and not self._own_ctx and not self.context.closed:
                self._pd.close()                # with our own context it goes anyway
            if self._own_ctx:
                self.context.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_QP_STATE_AFTER = {E.RDMA_CM_EVENT_ESTABLISHED: QPState.IBV_QPS_RTS,
                   E.RDMA_CM_EVENT_DISCONNECTED: QPState.IBV_QPS_ERR}


class CMEvent:
    """One rdma_cm_event: ``event_type``, ``id`` (the CMID), ``listen_id``, ``status``
    (REJ reason, SIDR_REP status or -errno), ``private_data``, ``ud_param`` (a UD id's
    ESTABLISHED: read it with ``UDParam(event)``), and for
    RNIC_CM_EVENT_OFFLOAD_ESTABLISHED ``conns``: the CMIDs the daemon established.
    ``CMEvent(channel)`` blocks for the next."""

    def __init__(self, channel: CMEventChannel, timeout: float | None = None, _raw=None):
        raw = _raw if _raw is not None else channel._pull(timeout)
        if raw is None:
            raise RnicError(errno.ETIMEDOUT, "no CM event arrived")
        self.channel = channel
        self.raw = raw
        try:
            self.event_type = E(raw.get("cm_event"))
        except ValueError:
            raise RnicError(errno.EPROTO, f"unknown CM event {raw.get('cm_event')!r}") from None
        self.status = raw.get("status", 0)
        self.private_data = bytes(raw.get("private_data") or b"")
        self.ud_param = raw.get("ud_param")
        self.remote_ip, self.remote_port = raw.get("remote_ip"), raw.get("remote_port")
        handle = raw.get("id")
        if self.event_type == E.RDMA_CM_EVENT_CONNECT_REQUEST:
            self.listen_id = channel._ids.get(raw.get("listen_id"))
            self.id = CMID(creator=self, listen_id=self.listen_id)
        else:
            self.id = channel._ids.get(handle)
            self.listen_id = None
        qp = getattr(self.id, "qp", None)
        if qp is not None and self.event_type in _QP_STATE_AFTER:
            qp._state = _QP_STATE_AFTER[self.event_type]     # the daemon moved the QP
        self.conns = []
        if self.event_type == E.RNIC_CM_EVENT_OFFLOAD_ESTABLISHED:
            self.listen_id = self.id
            self.conns = [CMID._offloaded(self.listen_id, c) for c in raw.get("conns") or ()]

    def ack_cm_event(self) -> None:
        """Nothing to free here (the event is a Python object); kept for pyverbs code."""

    def event_str(self) -> str:
        return self.event_type.name

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        extra = f", {len(self.conns)} connections" if self.conns else ""
        return f"CMEvent({self.event_type.name}, status={self.status}{extra})"


# ---- the identifier ------------------------------------------------------------------------
class CMID:
    """rdma_cm_id. ``CMID(creator=AddrInfo | CMEventChannel | CMEvent, qp_init_attr=None,
    pd=None, port_space=RDMA_PS_TCP, listen_id=None)``. A synchronous id (from an AddrInfo)
    opens its own Context, on the daemon at ``socket`` (default: $RNIC_SOCKET...), unless
    ``context`` or ``pd`` names one: rnic's additions, since rnicd has no device discovery.
    A passive synchronous id keeps ``qp_init_attr`` for the ids get_request() returns (each
    gets its QP), as rdma_create_ep does."""

    def __init__(self, creator=None, qp_init_attr: QPInitAttr | None = None, pd: PD = None,
                 port_space=RDMA_PS_TCP, listen_id: CMID | None = None, *, context=None,
                 socket=None):
        self.handle = None
        self.qp: QP | None = None
        self._qp_handle = None           # offloaded: the daemon's QP, opened on first use
        self._own = []                   # objects this id created (CQs), closed with it
        self.pd = pd
        self.local_ip = self.remote_ip = None
        self.local_port = self.remote_port = 0
        self.offload: OffloadTemplate | None = None
        self.private_data = b""          # what the peer sent with its REQ, REP or REJ
        self._closed = False
        self._qp_init_attr = None        # passive sync id: each request's QP (get_request)
        self._local_ece = None
        self.port_space = _port_space(port_space)
        if isinstance(creator, AddrInfo):
            self._sync = True
            self.port_space = creator.port_space
            self.event_channel = CMEventChannel(context if context is not None else
                                                pd.ctx if pd is not None else None, socket)
            self._create()
            if creator.passive:
                self.bind_addr(creator)
                self._qp_init_attr = qp_init_attr
            else:
                self.resolve_addr(creator)
                self.resolve_route()
                if qp_init_attr is not None:
                    self.create_qp(qp_init_attr)
        elif isinstance(creator, CMEventChannel):
            self._sync = False
            self.event_channel = creator
            self._create()
        elif isinstance(creator, CMEvent):           # a connection request's new id
            if listen_id is None:
                raise einval("CMID(creator=CMEvent) needs listen_id")
            self._sync = listen_id._sync
            self.event_channel = listen_id.event_channel
            self.port_space = listen_id.port_space
            self.pd = listen_id.pd                    # as pyverbs: the listener's PD
            self._adopt(creator.raw.get("id"))
            self.local_ip, self.local_port = listen_id.local_ip, listen_id.local_port
            self.remote_ip, self.remote_port = creator.remote_ip, creator.remote_port
            self.private_data = creator.private_data
        elif creator is not None:
            raise einval(f"cannot create a CMID from {type(creator).__name__}")
        else:
            raise einval("CMID needs a creator: AddrInfo, CMEventChannel or CMEvent")

    def _create(self) -> None:
        r, _ = self.context._call("cm_create_id", {"ps": self.port_space})
        self._adopt(r["id"])

    def _adopt(self, handle: int) -> None:
        self.handle = handle
        self.event_channel._ids[handle] = self

    @classmethod
    def _offloaded(cls, listen_id: CMID, c: dict) -> CMID:
        self = cls.__new__(cls)
        self.qp, self._qp_handle, self._own, self._closed = None, c.get("qp"), [], False
        self.port_space, self._qp_init_attr, self._local_ece = RDMA_PS_TCP, None, None
        self._sync, self.event_channel = listen_id._sync, listen_id.event_channel
        self.pd, self.offload = listen_id.offload.pd, listen_id.offload
        self._adopt(c.get("id"))
        self.local_ip, self.local_port = c.get("local_ip"), c.get("local_port")
        self.remote_ip, self.remote_port = c.get("remote_ip"), c.get("remote_port")
        self.qp_num, self.private_data = c.get("qp_num"), bytes(c.get("private_data") or b"")
        return self

    # ---- properties ----------------------------------------------------------------------
    @property
    def context(self) -> Context:
        return self.event_channel.context

    @property
    def qpn(self) -> int | None:
        """The number of the id's QP (None without one), as pyverbs' CMID.qpn."""
        if self.qp is not None:
            return self.qp.qp_num
        return getattr(self, "qp_num", None)

    def open_qp(self) -> QP:
        """An offloaded connection's QP (in RTS, receives pre-posted): map it on first use."""
        if self.qp is None and self._qp_handle is not None:
            a = self.offload.qp_init_attr
            self.qp = QP._open(self.pd, self._qp_handle, a.send_cq, a.recv_cq)
        return self.qp

    # ---- addresses -----------------------------------------------------------------------
    def bind_addr(self, ai: AddrInfo) -> None:
        """Bind to a local address (and port: ai's service) of this device."""
        self._check_open()
        if ai.src not in (None, "0.0.0.0"):
            resolve_source(self.context, ai.src, ai.src)
        self.local_ip, self.local_port = ai.src, ai.port
        self._ensure_pd()

    def resolve_addr(self, ai: AddrInfo, timeout_ms: int = 2000) -> None:
        """Resolve the destination (rdma_resolve_addr): ADDR_RESOLVED, or ADDR_ERROR."""
        self._check_open()
        try:
            self.local_ip = resolve_source(self.context, ai.dst, ai.src)
        except RnicError as exc:
            if self._sync:
                raise
            return self.event_channel._post_local({"cm_event": int(E.RDMA_CM_EVENT_ADDR_ERROR),
                                                   "id": self.handle, "status": -exc.code})
        self.remote_ip, self.remote_port = ai.dst, ai.port
        self._ensure_pd()
        if not self._sync:
            self.event_channel._post_local({"cm_event": int(E.RDMA_CM_EVENT_ADDR_RESOLVED),
                                            "id": self.handle})

    def resolve_route(self, timeout_ms: int = 2000) -> None:
        """RoCE routes are the IP route found by resolve_addr: ROUTE_RESOLVED at once."""
        self._check_open()
        if self.remote_ip is None:
            raise einval("resolve_route: resolve_addr first")
        if not self._sync:
            self.event_channel._post_local({"cm_event": int(E.RDMA_CM_EVENT_ROUTE_RESOLVED),
                                            "id": self.handle})

    # ---- resources -----------------------------------------------------------------------
    def _ensure_pd(self) -> None:
        if self.pd is None:
            self.pd = self.event_channel._default_pd()

    def create_qp(self, qp_init_attr: QPInitAttr) -> QP:
        """rdma_create_qp: a QP on this id's PD, of the port space's type (RC for TCP and
        IB, UD for UDP, as rdma_create_ep sets it); CQs are created when the attributes name
        none. An RC QP goes to INIT now and the CM moves it to RTR/RTS during
        connect/accept; a UD QP goes straight to RTS with the id's Q_Key (RDMA_UDP_QKEY), as
        librdmacm's ucma_init_ud_qp does."""
        self._check_open()
        if self.qp is not None:
            raise einval(f"create_qp: CM id {self.handle} has a QP already")
        self._ensure_pd()
        a = qp_init_attr
        a.qp_type = qp_type_of(self.port_space)
        if a.send_cq is None or a.recv_cq is None:
            depth = max(a.cap.max_send_wr, a.cap.max_recv_wr, 1) * 2
            cq = CQ(self.context, depth)
            self._own.append(cq)
            a.send_cq = a.send_cq or cq
            a.recv_cq = a.recv_cq or cq
        qp = QP(self.pd, a)
        try:
            if a.qp_type == QPType.IBV_QPT_UD:
                for state in (QPState.IBV_QPS_INIT, QPState.IBV_QPS_RTR, QPState.IBV_QPS_RTS):
                    qp.modify(*self.init_qp_attr(state))
            else:
                # as librdmacm does: straight to INIT, so that receives can be posted before
                # the connection is made; rdma_cm's access flags for RC
                qp.to_init(QPAttr(qp_access_flags=RC_ACCESS))
        except BaseException:
            qp.close()
            raise
        self.qp = qp
        return qp

    def init_qp_attr(self, qp_state) -> tuple[QPAttr, int]:
        """rdma_init_qp_attr: ``(QPAttr, attr_mask)`` that move a QP, the id's or an
        external one, to ``qp_state`` (INIT, RTR or RTS) for this connection. RTR and RTS
        need the peer's QPN and PSN: after CONNECT_REQUEST (passive) or CONNECT_RESPONSE
        (active)."""
        self._check_open()
        r, _ = self.context._call("cm_init_qp_attr", {"id": self.handle,
                                                      "qp_state": int(qp_state)})
        attr = QPAttr.from_dict(r.get("attr") if isinstance(r.get("attr"), dict) else {})
        return attr, int(r.get("attr_mask", 0))

    def _reg(self, size: int, access: int) -> MR:
        self._check_open()
        self._ensure_pd()
        return MR(self.pd, size, access)

    def reg_msgs(self, size: int) -> MR:
        """rdma_reg_msgs: memory for sends and receives, on the id's PD."""
        return self._reg(size, IBV_ACCESS_LOCAL_WRITE)

    def reg_read(self, size: int = 0) -> MR:
        """rdma_reg_read: memory the peer may RDMA READ (local write, remote read)."""
        return self._reg(size, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ)

    def reg_write(self, size: int = 0) -> MR:
        """rdma_reg_write: memory the peer may RDMA WRITE (local write, remote write)."""
        return self._reg(size, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)

    # ---- options and ECE -----------------------------------------------------------------
    def set_option(self, level, optname, optval, optlen=1) -> None:
        """rdma_set_option: RDMA_OPTION_ID_ACK_TIMEOUT (the QP's local ACK timeout code,
        applied when the CM moves the QP to RTS or in init_qp_attr), RDMA_OPTION_ID_TOS,
        REUSEADDR and AFONLY (accepted; each port space has its own ports, IPv4 only).
        RDMA_OPTION_IB_PATH answers EOPNOTSUPP (RoCE routes by IP), others ENOSYS."""
        self._check_open()
        if isinstance(optval, (bytes, bytearray)):
            optval = int.from_bytes(optval, "little")
        if isinstance(optval, bool) or not isinstance(optval, int):
            raise einval(f"set_option: the value must be an integer, got {optval!r}")
        if not isinstance(optlen, int) or optlen <= 0:
            raise einval(f"set_option: optlen must be a positive size, got {optlen!r}")
        self.context._call("cm_set_option", {"id": self.handle, "level": int(level),
                                             "name": int(optname), "value": optval})

    def set_local_ece(self, ece: ECE) -> None:
        """rdma_set_local_ece: checked as librdmacm does (EINVAL when the id has a QP or the
        ECE has no vendor); rnicd's CM carries no ECE, so the peer sees none."""
        self._check_open()
        if self.qp is not None or not isinstance(ece, ECE) or not ece.vendor_id:
            raise einval("set_local_ece: an ECE with a vendor_id, on an id without a QP")
        self._local_ece = ece

    def get_remote_ece(self) -> ECE:
        """rdma_get_remote_ece: the ECE the peer sent: none (all zero), as from a device
        without ECE (EINVAL when the id has a QP, as librdmacm)."""
        self._check_open()
        if self.qp is not None:
            raise einval("get_remote_ece: for ids without a QP (external QPs)")
        return ECE()

    # ---- connection ----------------------------------------------------------------------
    def listen(self, backlog: int = 0, offload: OffloadTemplate | None = None) -> None:
        """Listen on the bound port. With ``offload`` the daemon completes handshakes itself
        and reports established connections in bulk (RNIC_CM_EVENT_OFFLOAD_ESTABLISHED)."""
        self._check_open()
        args = {"id": self.handle, "port": self.local_port, "backlog": int(backlog)}
        if offload is not None:
            args["offload"] = offload.to_dict()
            self.offload = offload
        r, _ = self.context._call("cm_listen", args)
        self.local_port, self.local_ip = r.get("port", self.local_port), r.get("ip")

    def get_request(self, timeout: float | None = None) -> CMID:
        """rdma_get_request: wait for the next connection request on this listening id ->
        its new CMID, with a QP when the listener was created with qp_init_attr."""
        self._check_open()
        new = self.event_channel._wait(
            lambda raw: raw.get("listen_id") == self.handle
            and raw.get("cm_event") == E.RDMA_CM_EVENT_CONNECT_REQUEST,
            timeout, "connection request").id
        if self._qp_init_attr is not None:
            a = self._qp_init_attr
            new.create_qp(QPInitAttr(qp_type=a.qp_type, qp_context=a.qp_context,
                                     scq=a.send_cq, rcq=a.recv_cq, srq=a.srq, cap=a.cap,
                                     sq_sig_all=a.sq_sig_all))
        return new

    def wait_event(self, *kinds: CMEventType, timeout: float | None = SYNC_TIMEOUT) -> CMEvent:
        """The next event of one of `kinds` for this id (events for other ids stay queued
        for get_cm_event); RnicError ETIMEDOUT after `timeout` seconds."""
        self._check_open()
        names = "/".join(E(k).name for k in kinds)
        return self.event_channel._wait(
            lambda raw: raw.get("id") == self.handle and raw.get("cm_event") in kinds,
            timeout, f"{names} event for CM id {self.handle}")

    def connect(self, param: ConnParam | None = None) -> None:
        """Send a REQ (a SIDR_REQ for a UD id). Synchronous ids return once ESTABLISHED, or
        CONNECT_RESPONSE for an external QP (RnicError ECONNREFUSED on a REJ, ETIMEDOUT or
        the SIDR status when the peer does not answer or refuses)."""
        self._check_open()
        p = param or ConnParam()
        if self.remote_ip is None:
            raise einval("connect: resolve_addr first")
        r, _ = self.context._call("cm_connect", {
            "id": self.handle, "qp": None if self.qp is None else self.qp.handle,
            "dst_ip": self.remote_ip,
            "port": self.remote_port, "conn_param": p.to_dict(),
            "private_data": p.private_data})
        self.local_port = r.get("local_port", 0)
        if self._sync:
            self._complete("connect")

    def accept(self, param: ConnParam | None = None) -> None:
        """Accept a connection request with this id's QP (REP), or the external QP that
        ``param.qp_num`` names; a UD id's request gets a SIDR_REP with the UD QP's number
        and Q_Key. Synchronous RC ids return once the RTU arrived (ESTABLISHED)."""
        self._check_open()
        p = param or ConnParam()
        self.context._call("cm_accept", {"id": self.handle,
                                         "qp": None if self.qp is None else self.qp.handle,
                                         "conn_param": p.to_dict(),
                                         "private_data": p.private_data})
        if self._sync and self.port_space not in UD_PORT_SPACES:
            self._complete("accept")

    def establish(self) -> None:
        """rdma_establish: after CONNECT_RESPONSE (a connect without a QP on the id) and
        moving the external QP to RTS, send the RTU; the passive side gets ESTABLISHED."""
        self._check_open()
        self.context._call("cm_establish", {"id": self.handle})

    def _complete(self, verb: str) -> CMEvent:
        ev = self.wait_event(E.RDMA_CM_EVENT_ESTABLISHED, E.RDMA_CM_EVENT_REJECTED,
                             E.RDMA_CM_EVENT_UNREACHABLE, E.RDMA_CM_EVENT_CONNECT_ERROR,
                             E.RDMA_CM_EVENT_CONNECT_RESPONSE, E.RDMA_CM_EVENT_ADDR_ERROR)
        if ev.event_type in (E.RDMA_CM_EVENT_ESTABLISHED, E.RDMA_CM_EVENT_CONNECT_RESPONSE):
            self.private_data = ev.private_data
            if ev.ud_param is not None:
                self.ud_param = UDParam(ev)     # a UD id: what SIDR resolved
            return ev
        if ev.status < 0:                      # -errno (timeouts, a bad Q_Key)
            code = -ev.status
        else:                                  # a REJ reason or SIDR status: refused
            code = {E.RDMA_CM_EVENT_REJECTED: errno.ECONNREFUSED,
                    E.RDMA_CM_EVENT_UNREACHABLE: errno.ECONNREFUSED}.get(ev.event_type,
                                                                         errno.ECONNABORTED)
        exc = RnicError(code, f"{verb}: {ev.event_type.name} (status {ev.status})")
        exc.event = ev
        raise exc

    def reject(self, private_data: bytes = b"") -> None:
        self._check_open()
        self.context._call("cm_reject", {"id": self.handle, "private_data": bytes(private_data)})

    def disconnect(self) -> None:
        """DREQ; the QP goes to ERR, flushing outstanding work requests. Synchronous ids
        return once DISCONNECTED (the DREP, or the peer's DREQ, arrived)."""
        self._check_open()
        self.context._call("cm_disconnect", {"id": self.handle})
        if self._sync:
            self.wait_event(E.RDMA_CM_EVENT_DISCONNECTED)

    # ---- data path helpers (rdma_verbs.h) ------------------------------------------------
    def _own_qp(self, verb: str) -> QP:
        if self.qp is None:
            raise einval(f"{verb}: CM id {self.handle} has no QP (create_qp)")
        return self.qp

    def post_recv(self, mr: MR, length=None, wr_id: int = 0) -> None:
        """rdma_post_recv: receive into the MR's first ``length`` bytes (all of it)."""
        n = length or mr.length
        self._own_qp("post_recv").post_recv(
            RecvWR(wr_id=wr_id, num_sge=1, sg=[SGE(mr.buf, n, mr.lkey)]))

    def post_send(self, mr: MR, flags: int = IBV_SEND_SIGNALED, length=None,
                  wr_id: int = 0) -> None:
        """rdma_post_send: send the MR's first ``length`` bytes (all of it)."""
        n = length or mr.length
        self._own_qp("post_send").post_send(
            SendWR(wr_id=wr_id, num_sge=1, sg=[SGE(mr.buf, n, mr.lkey)], send_flags=flags))

    def _post_rdma(self, opcode, mr: MR, length, remote_addr, rkey, flags, verb) -> None:
        wr = SendWR(opcode=opcode, num_sge=1, sg=[SGE(mr.buf, length, mr.lkey)],
                    send_flags=flags)
        wr.set_wr_rdma(rkey, remote_addr)
        self._own_qp(verb).post_send(wr)

    def post_read(self, mr: MR, length, remote_addr, rkey, flags=0) -> None:
        """rdma_post_read: RDMA READ ``length`` bytes at the peer's ``remote_addr``/``rkey``
        into the MR."""
        self._post_rdma(WROpcode.IBV_WR_RDMA_READ, mr, length, remote_addr, rkey, flags,
                        "post_read")

    def post_write(self, mr: MR, length, remote_addr, rkey, flags=0) -> None:
        """rdma_post_write: RDMA WRITE the MR's first ``length`` bytes to the peer."""
        self._post_rdma(WROpcode.IBV_WR_RDMA_WRITE, mr, length, remote_addr, rkey, flags,
                        "post_write")

    def post_ud_send(self, mr: MR, ah, rqpn=0, flags=IBV_SEND_SIGNALED, length=None) -> None:
        """rdma_post_ud_send: one datagram to QP ``rqpn`` through ``ah``, with rdma_cm's
        Q_Key RDMA_UDP_QKEY."""
        n = length or mr.length
        wr = SendWR(num_sge=1, sg=[SGE(mr.buf, n, mr.lkey)], send_flags=flags)
        wr.set_wr_ud(ah, rqpn, RDMA_UDP_QKEY)
        self._own_qp("post_ud_send").post_send(wr)

    def _get_comp(self, cq, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            n, wcs = cq.poll(1)
            if n:
                return wcs[0]
            if time.monotonic() > deadline:
                raise RnicError(errno.ETIMEDOUT, "no completion arrived")
            time.sleep(0.0002)

    def get_recv_comp(self, timeout: float = SYNC_TIMEOUT):
        """rdma_get_recv_comp: the next completion of the id's receive CQ (waits)."""
        return self._get_comp(self._own_qp("get_recv_comp").rcq, timeout)

    def get_send_comp(self, timeout: float = SYNC_TIMEOUT):
        """rdma_get_send_comp: the next completion of the id's send CQ (waits)."""
        return self._get_comp(self._own_qp("get_send_comp").scq, timeout)

    def query_qp(self, attr_mask: int = 0):
        return self._own_qp("query_qp").query(attr_mask)

    # ---- teardown ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RnicError(errno.EBADF, "CMID is closed")

    def close(self) -> None:
        """rdma_destroy_id (and its QP): a live connection is disconnected first."""
        if self._closed:
            return
        self._closed = True
        ctx = self.context
        if self.handle is not None and not ctx.closed:
            ctx._destroy("cm_destroy_id", {"id": self.handle})
        for obj in [self.qp] + self._own[::-1]:
            if obj is not None and not obj.closed:
                obj.close()
        if self._sync and self.event_channel._own_ctx and self.offload is None and \
                not any(c is not self for c in self.event_channel._ids.values()):
            self.event_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"CMID({self.handle}, {self.local_ip}:{self.local_port} -> "
                f"{self.remote_ip}:{self.remote_port})")

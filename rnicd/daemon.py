"""The daemon: wires the sans-I/O device to its sockets, eventfds and timers.

After anything that may have produced output (a datagram batch, a doorbell, a control verb,
a timer), `_drain()` sends the device's datagrams, signals completion channels, forwards
asynchronous events, and re-arms the one timer for the earliest deadline.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import stat

from rnicd.api.session import Session
from rnicd.config import Config
from rnicd.core.device import Device
from rnicd.errors import VerbsError
from rnicd.io.control import ControlServer
from rnicd.io.engines import Engines
from rnicd.io.engines import default_count as default_engines
from rnicd.io.netif import LinkWatcher, interface_of
from rnicd.io.shm import SharedMemory
from rnicd.io.systemd import listen_socket, sd_notify, watchdog_interval
from rnicd.io.udp import RocePort, open_roce_socket
from rnicd.wire import ctl

log = logging.getLogger("rnicd")

_ONE = (1).to_bytes(8, "little")


def _raise_fd_limit():
    """Every QP holds ring memfds until its client maps them (offloaded connections for a
    while): lift the soft descriptor limit to the hard one, as servers commonly do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d: %s", soft, exc)


class Daemon:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.loop = loop or asyncio.get_event_loop()
        self.device = Device(config.device, config.bind, config.port, config.fault)
        self.shm = SharedMemory()
        self.sessions: dict[object, Session] = {}     # connection -> session
        self.primary: dict[Session, object] = {}      # session -> its first connection
        self.shm.sessions = self.sessions.values()
        self._ring_fds: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._producing = False             # a call to _produce is scheduled
        self._stopped = asyncio.Event()
        self.port: RocePort | None = None
        self.engines: Engines | None = None
        self.control: ControlServer | None = None
        self.watcher: LinkWatcher | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, listen_sock=None):
        _raise_fd_limit()
        link = interface_of(self.config.bind)
        if link is not None:
            self._link_changed(link)
            self.watcher = LinkWatcher(self.loop, self.config.bind, self._link_changed)
        n = self.config.engines
        n = default_engines() if n is None else n
        if n:
            # the engines' sockets join the port's group first: steering picks among them
            self.engines = Engines(self.loop, self.device, self.shm, self.config.bind,
                                   self.config.port, n, self.config.engine_spin_us,
                                   self._engine_events, self.config.udp_gso)
        sock = open_roce_socket(self.config.bind, self.config.port,
                                reuseport=self.engines is not None)
        self.port = RocePort(self.loop, sock, self.device, self._after_batch, self._held)
        if self.engines:
            self.engines.start()
        self.control = ControlServer(self.loop, self.config.ctl_socket, self._handle,
                                     self._connection_closed, self._sent_fds, listen_sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        log.info("rnicd: device %s on %s:%d, control socket %s, %s", self.device.name,
                 self.config.bind, self.config.port, self.config.ctl_socket,
                 f"{n} engines" if self.engines else "no engines")
        sd_notify("READY=1\nSTATUS=serving " + self.device.name)

    def _link_changed(self, link):
        """The bound interface's addresses, state or MTU changed (netlink)."""
        self.device.apply_link(link.ifname, link.mtu, link.up, link.addrs)
        self.device.netdev_ifindex = link.index
        log.info("rnicd: %s on %s: MTU %d (active_mtu %d), %s, %d addresses", self.config.bind,
                 link.ifname, link.mtu, 128 << self.device.active_mtu,
                 "up" if link.up else "down", len(link.addrs))
        if self.port:
            with self._held():
                self._drain()

    def _held(self):
        """core/ works on the data plane's state: the engines wait at a safe point."""
        return self.engines.held() if self.engines else contextlib.nullcontext()

    async def serve(self, listen_sock=None):
        self.start(listen_sock if listen_sock is not None else listen_socket())
        interval = watchdog_interval()
        if interval:                        # WatchdogSec: prove the loop is alive
            self._watchdog(interval)
        await self._stopped.wait()
        self.shutdown()

    def _watchdog(self, interval: float):
        if not self._stopped.is_set():
            sd_notify("WATCHDOG=1")
            self.loop.call_later(interval, self._watchdog, interval)

    def stop(self):
        self._stopped.set()

    def shutdown(self):
        sd_notify("STOPPING=1")
        if self.control:
            with self._held():
                self.control.close()      # closes every session: releases all objects
        if self.engines:
            self.engines.stop()
        if self.port:
            self.port.close()
        if self.watcher:
            self.watcher.stop()
        if self._timer:
            self._timer.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.remove_signal_handler(sig)
        log.info("rnicd: stopped")

    # ---- control verbs -------------------------------------------------------------------
    def _handle(self, conn, msg, fds):
        now = self.loop.time()
        method, args = msg.get("m"), msg.get("a") or {}
        session = self.sessions.get(conn)
        if session is None and method == "import_context":
            return self._import_context(conn, msg, fds)
        if session is None:
            if method != "hello":
                raise VerbsError(71, "the first request on a connection must be 'hello' "
                                 "(or 'import_context')")
            if msg.get("v") != ctl.PROTOCOL_VERSION:
                raise VerbsError(71, f"protocol version {msg.get('v')!r} not supported; "
                                 f"this rnicd speaks {ctl.PROTOCOL_VERSION}")
            want = args.get("device")
            if want not in (None, self.device.name):
                raise VerbsError(19, f"no device '{want}' here; this rnicd has "
                                 f"'{self.device.name}'")
            pid = args.get("pid") if isinstance(args.get("pid"), int) else None
            session = Session(self.device, self.shm, pid)
            session.sockets.update(_socket_inodes(fds[:1]))
            self.sessions[conn] = session
            self.primary[session] = conn
            conn.session = session
            if not self.engines:            # else the engines wait on the doorbells
                for fd in session.doorbell_fds:
                    self.loop.add_reader(fd, self._doorbell, session, fd)
        session.caller = conn
        with self._held():
            if self.engines:
                self.engines.before_verb(session, now)
            try:
                result, out_fds = session.call(method, args, fds, now)
            finally:
                session.caller = None
                self._drain()
        self._ring_fds.update(fd for fd in out_fds if fd not in self._eventfds(session))
        return result, out_fds

    def _import_context(self, conn, msg, fds):
        """ibv_import_device: a second connection joins the context whose client socket it
        passes (the cmd_fd, by SCM_RIGHTS: holding it is the proof), and shares its objects
        (handles) until the last connection of the context closes."""
        if msg.get("v") != ctl.PROTOCOL_VERSION:
            raise VerbsError(71, f"protocol version {msg.get('v')!r} not supported")
        if not fds:
            raise VerbsError(errno.EBADF, "import_context needs the cmd_fd of a context")
        ino = _socket_inodes(fds[:1])
        session = next((s for s in self.sessions.values() if ino & s.sockets), None)
        if session is None:
            raise VerbsError(errno.ENOENT, "import_context: that fd is not the command "
                             "socket of a context of this rnicd")
        session.sockets.update(_socket_inodes(fds[1:2]))
        self.sessions[conn] = session
        conn.session = session
        return session.call("hello", {}, [], self.loop.time())

    @staticmethod
    def _eventfds(session) -> set[int]:
        return set(session.doorbell_fds) | {ch.fd for ch in session.channels.values()}

    def _sent_fds(self, fds):
        """Ring memfds are the client's once sent: close our copy (the mapping stays)."""
        for fd in fds:
            if fd in self._ring_fds:
                self._ring_fds.discard(fd)
                self.shm.close_fd(fd)

    def _connection_closed(self, conn):
        session = self.sessions.pop(conn, None)
        if session is None:
            return
        if session in self.sessions.values():   # an imported context still holds it open
            if self.primary.get(session) is conn:
                self.primary[session] = next(c for c, s in self.sessions.items() if s is session)
            with self._held():
                session.drop_route(conn, self.loop.time())
                self._drain()
            return
        self.primary.pop(session, None)
        if not self.engines:
            for fd in session.doorbell_fds:
                self.loop.remove_reader(fd)
        log.info("client %s gone: releasing %d QPs, %d MRs", session.pid or "?",
                 len(session.qps), len(session.mrs))
        with self._held():
            session.close(self.loop.time())
            self._drain()

    # ---- data path events ----------------------------------------------------------------
    def _doorbell(self, session, fd):
        try:
            os.read(fd, 8)
        except BlockingIOError:
            pass
        self.device.doorbell(session, self.loop.time())
        self._drain()

    def _after_batch(self):
        self.device.end_batch(self.loop.time())      # RocePort holds the engines
        self._drain()

    def _engine_events(self):
        with self._held():
            self.engines.handle_events(self.loop.time())
            self._drain()

    def _produce(self):
        self._producing = False
        with self._held():
            self.device.produce(self.loop.time())
            self._drain()

    def _on_timer(self):
        self._timer = self._timer_at = None
        with self._held():
            self.device.on_timer(self.loop.time())
            self._drain()

    def _drain(self):
        d = self.device
        d.inject_faults()
        if d.tx:                             # a spill: one datagram at a time, in order
            for data, addr in d.take_tx():
                self.port.send(data, addr)
        elif d.dp.ntx:
            self.port.send_queued(d.dp)
        for delay, dgram, addr in d.take_later():
            self.loop.call_later(delay, self.port.send, dgram, addr)
        if d.reading and not self._producing:
            # READ responses in progress: more once the loop has served other events
            self._producing = True
            self.loop.call_soon(self._produce)
        d.take_notifications()
        if d.notify:
            for ch in d.notify:
                try:
                    os.write(ch.fd, _ONE)
                except OSError:
                    pass
            d.notify.clear()
        if d.events:
            events, d.events = d.events, []
            for owner, ev in events:
                # None: every client; a connection (a CM id's route); a session: its first
                if owner is None:
                    conns = self.sessions
                elif owner in self.sessions:
                    conns = [owner]
                else:
                    conns = filter(None, [self.primary.get(owner)])
                for conn in list(conns):
                    conn.send({"ev": ev})
        deadline = d.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)


def _socket_inodes(fds) -> set[int]:
    """The inodes of the Unix sockets among fds (a client's own command socket)."""
    out = set()
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            out.add(st.st_ino)
    return out

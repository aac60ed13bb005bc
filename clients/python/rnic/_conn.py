"""The control connection to rnicd: one blocking Unix stream socket per Context.

Framing and message shapes: rnicd/wire/ctl.py and docs/control-protocol.md. File
descriptors travel with SCM_RIGHTS on the first byte of their message; they are queued in
arrival order and each message takes its ``nfds`` of them, so by the time a message is
complete its descriptors have arrived. Asynchronous events (``{"ev": ...}``) that arrive
while a call waits for its reply are queued for `Connection.next_event`.

Thread safety: one lock around a request and its reply. Everything read from the socket is
untrusted until checked here (message shape, fd counts, ids).
"""
import array
import asyncio
import collections
import errno
import os
import select
import socket
import threading
import time

from rnicd.wire import ctl

from .errors import RnicError

DEFAULT_SOCKET = "/run/rnicd/rnicd.sock"
_RECV_BYTES = 1 << 16
_ANC_SPACE = socket.CMSG_SPACE(ctl.MAX_FDS * 4 * 4)   # room for 4 messages of fds


def socket_path(explicit: str | os.PathLike | None = None, environ=None) -> str:
    """Where rnicd listens: ``explicit``, else $RNIC_SOCKET, else
    $XDG_RUNTIME_DIR/rnicd/rnicd.sock, else /run/rnicd/rnicd.sock."""
    env = os.environ if environ is None else environ
    if explicit:
        return os.fspath(explicit)
    if env.get("RNIC_SOCKET"):
        return env["RNIC_SOCKET"]
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "rnicd", "rnicd.sock")
    return DEFAULT_SOCKET


def _close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Connection:
    """A control connection; `call` sends one request and returns its reply."""

    def __init__(self, path: str | os.PathLike | None = None, sock: socket.socket | None = None):
        self.path = socket_path(path) if sock is None else (path or "<socket>")
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                code = exc.errno or errno.ECONNREFUSED
                raise RnicError(code, f"cannot reach rnicd at {self.path}: "
                                f"{exc.strerror or exc} (is the daemon running? `make run`)"
                                ) from None
        self._sock = sock
        self._lock = threading.Lock()
        self._decoder = ctl.Decoder()
        self._msgs = collections.deque()     # complete messages not yet consumed
        self._fds = collections.deque()      # received fds not yet handed to a message
        self._events = collections.deque()   # async event bodies
        self._cm_events = collections.deque()  # connection-manager event bodies (rdma_cm)
        self._deferred = collections.deque()  # (method, args) queued by finalizers
        self._next_id = 1
        self._abandoned = set()               # ids whose caller stopped waiting
        self._dead: RnicError | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    # ---- requests ---------------------------------------------------------------------
    def call(self, method: str, args: dict | None = None, fds=()) -> tuple[dict, list[int]]:
        """Send ``method(args)`` with ``fds``; return (result, received fds).

        An error reply raises RnicError(code, msg). The caller owns the returned fds."""
        with self._lock:
            self._flush_deferred()
            reply, rfds = self._roundtrip(method, args, fds)
        if "e" in reply:
            _close_fds(rfds)
            raise _error_from(method, reply["e"])
        result = reply.get("r")
        if result is None:
            result = {}
        if not isinstance(result, dict):
            _close_fds(rfds)
            raise RnicError(errno.EPROTO, f"{method}: reply result is not a map: {result!r}")
        return result, rfds

    def defer(self, method: str, args: dict) -> None:
        """Queue a request whose reply does not matter (finalizers); sent before the next call."""
        self._deferred.append((method, args))

    def _flush_deferred(self) -> None:
        while self._deferred and self._dead is None:
            method, args = self._deferred.popleft()
            try:
                reply, rfds = self._roundtrip(method, args, ())
            except RnicError:
                return
            _close_fds(rfds)

    def _roundtrip(self, method, args, fds):
        if self._dead is not None:
            raise self._dead
        mid = self._next_id
        self._next_id += 1
        try:
            data = ctl.encode({"v": ctl.PROTOCOL_VERSION, "id": mid, "m": method,
                               "a": args if args is not None else {}, "nfds": len(fds)})
        except (ctl.ProtocolError, TypeError, ValueError, OverflowError) as exc:
            raise RnicError(errno.EINVAL, f"{method}: cannot encode the request: {exc}") \
                from None
        try:
            sent = 0
            if fds:   # the descriptors ride on the first byte (socket.send_fds drops flags)
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self._sock.sendmsg([data], anc, socket.MSG_NOSIGNAL)
            if sent < len(data):
                self._sock.sendall(data[sent:], socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise self._fail(f"{method}: sending to rnicd failed: {exc.strerror or exc} "
                             "(is the daemon still running?)",
                             errno.ECONNRESET if exc.errno == errno.EPIPE else
                             exc.errno or errno.EIO) from None
        try:
            while True:
                msg, rfds = self._next_message(block=True)
                if "ev" in msg:
                    self._queue_event(msg["ev"])
                    _close_fds(rfds)
                    continue
                if msg.get("id") in self._abandoned:   # its caller was interrupted
                    self._abandoned.discard(msg.get("id"))
                    _close_fds(rfds)
                    continue
                if msg.get("id") != mid:
                    _close_fds(rfds)
                    raise self._fail(f"{method}: reply for request {msg.get('id')!r}, "
                                     f"expected {mid}")
                return msg, rfds
        except BaseException:   # KeyboardInterrupt while waiting: drop the reply later
            if self._dead is None:
                self._abandoned.add(mid)
            raise

    # ---- reading ----------------------------------------------------------------------
    def _fail(self, msg: str, code: int = errno.EPROTO) -> RnicError:
        """The connection is unusable from now on; every later call raises this error."""
        if self._dead is None:
            self._dead = RnicError(code, msg)
        return self._dead

    def _next_message(self, block: bool):
        """One complete message and its fds; None when not blocking and none is ready."""
        while not self._msgs:
            if not self._pump(block):
                if not block:
                    return None, []
                # an event loop's add_reader (uvloop) may have made the socket non-blocking
                select.select([self._sock], [], [])
        msg = self._msgs.popleft()
        n = msg.get("nfds", 0)
        if not isinstance(n, int) or n < 0 or n > ctl.MAX_FDS or n > len(self._fds):
            raise self._fail(f"bad message from rnicd: nfds={n!r} with {len(self._fds)} "
                             "descriptors received")
        return msg, [self._fds.popleft() for _ in range(n)]

    def _pump(self, block: bool) -> bool:
        """Read once from the socket; False if nothing was there (non-blocking)."""
        if self._dead is not None:
            raise self._dead
        try:
            data, fds, flags = _recv_fds(self._sock, block)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise self._fail(f"reading from rnicd failed: {exc}", errno.ECONNRESET) from None
        self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise self._fail("rnicd sent more file descriptors than a message may carry")
        if not data:
            raise self._fail(f"rnicd closed the connection ({self.path})", errno.ECONNRESET)
        try:
            msgs = self._decoder.feed(data)
        except ctl.ProtocolError as exc:
            raise self._fail(f"bad message from rnicd: {exc}") from None
        for m in msgs:
            if not isinstance(m, dict):
                raise self._fail("bad message from rnicd: not a map")
        self._msgs.extend(msgs)
        return True

    # ---- asynchronous events ----------------------------------------------------------
    def _queue(self, kind: str) -> collections.deque:
        return self._cm_events if kind == "cm" else self._events

    def _queue_event(self, ev) -> None:
        if isinstance(ev, dict):
            self._queue("cm" if "cm_event" in ev else "async").append(ev)
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    def poll_event(self, kind: str = "async") -> dict | None:
        """The next queued event of ``kind`` ("async": verbs async events, "cm": connection
        manager events), reading what the socket holds without blocking."""
        queue = self._queue(kind)
        with self._lock:
            while not queue:
                msg, rfds = self._next_message(block=False)
                if msg is None:
                    break
                _close_fds(rfds)
                if "ev" in msg:
                    self._queue_event(msg["ev"])
                else:
                    raise self._fail(f"unsolicited reply from rnicd: {msg!r:.200}")
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass
            return queue.popleft() if queue else None

    def next_event(self, timeout: float | None = None, kind: str = "async") -> dict | None:
        """Block until an event of ``kind`` arrives (None after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ev = self.poll_event(kind)
            if ev is not None:
                return ev
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                return None
            select.select([self._sock, self._wake_r], [], [], left)

    async def next_event_async(self, kind: str = "async") -> dict:
        """Await the next event of ``kind`` without blocking the event loop (one waiter)."""
        loop = asyncio.get_running_loop()
        while True:
            ev = self.poll_event(kind)
            if ev is not None:
                return ev
            fut = loop.create_future()

            def wake(f=fut):
                if not f.done():
                    f.set_result(None)

            loop.add_reader(self._sock.fileno(), wake)
            loop.add_reader(self._wake_r, wake)
            try:
                await fut
            finally:
                loop.remove_reader(self._sock.fileno())
                loop.remove_reader(self._wake_r)

    # ---- teardown ---------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._sock is None:
                return
            self._sock.close()
            self._sock = None
            self._dead = self._dead or RnicError(errno.EBADF, "the Context is closed")
            _close_fds(self._fds)
            self._fds.clear()
            _close_fds((self._wake_r, self._wake_w))

    @property
    def closed(self) -> bool:
        return self._sock is None

    def gone(self) -> bool:
        """The daemon has closed the connection: end of file, peeked (nothing consumed)."""
        sock = self._sock
        if sock is None or self._dead is not None:
            return True
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


def _recv_fds(sock: socket.socket, block: bool):
    """recvmsg with SCM_RIGHTS (socket.recv_fds ignores its flags argument): the received
    descriptors are close-on-exec; MSG_DONTWAIT when not blocking."""
    flags = socket.MSG_CMSG_CLOEXEC | (0 if block else socket.MSG_DONTWAIT)
    data, anc, msg_flags, _ = sock.recvmsg(_RECV_BYTES, _ANC_SPACE, flags)
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), msg_flags


def _error_from(method: str, body) -> RnicError:
    """An error reply as RnicError; the body is untrusted."""
    if not isinstance(body, dict):
        return RnicError(errno.EPROTO, f"{method}: malformed error reply {body!r:.200}")
    code = body.get("code")
    if not isinstance(code, int) or code <= 0:
        code = errno.EPROTO
    msg = body.get("msg")
    if not isinstance(msg, str):
        msg = f"{method} failed"
    return RnicError(code, msg)

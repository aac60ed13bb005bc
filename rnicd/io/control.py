"""The control server: a Unix stream socket carrying length-prefixed msgpack (wire/ctl.py),
with file descriptors passed by SCM_RIGHTS. asyncio streams cannot carry fds, so connections
are driven with loop.add_reader and socket.recv_fds directly."""
from __future__ import annotations

import array
import errno
import logging
import os
import socket
from collections import deque

from rnicd.errors import VerbsError
from rnicd.wire import ctl

log = logging.getLogger("rnicd.control")


class Connection:
    """One client. `handler(conn, msg, fds)` returns (reply, fds_to_send, close_after_send)."""

    def __init__(self, server, sock: socket.socket):
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.decoder = ctl.Decoder()
        self.fds: deque[int] = deque()
        self.out: deque[tuple[bytes, list[int], bool]] = deque()  # data, fds, close_fds_after
        self.session = None
        self.closed = False
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self):
        try:
            data, fds = _recv_with_fds(self.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("control connection error: %s", exc)
            return self.close()
        self.fds.extend(fds)
        if not data:
            return self.close()
        try:
            messages = self.decoder.feed(data)
        except ctl.ProtocolError as exc:
            log.warning("closing control connection: %s", exc)
            return self.close()
        for msg in messages:
            self._dispatch(msg)
            if self.closed:
                return

    def _dispatch(self, msg: dict):
        rid = msg.get("id")
        nfds = msg.get("nfds", 0)
        if not isinstance(nfds, int) or not 0 <= nfds <= min(len(self.fds), ctl.MAX_FDS):
            log.warning("closing control connection: message claims %r fds", nfds)
            return self.close()
        fds = [self.fds.popleft() for _ in range(nfds)]
        try:
            result, out_fds = self.server.handler(self, msg, fds)
            reply = {"id": rid, "r": result, "nfds": len(out_fds)}
        except VerbsError as exc:
            reply, out_fds = {"id": rid, "e": ctl.error_body(exc.code, exc.msg)}, []
        except Exception as exc:    # a daemon bug: answer it, never leave the client waiting
            log.exception("internal error in control verb %r", msg.get("m"))
            reply, out_fds = {"id": rid, "e": ctl.error_body(
                errno.EIO, f"internal error in rnicd ({type(exc).__name__}: {exc}); "
                "see the daemon's log")}, []
        finally:
            for fd in fds:          # the handler dup'ed or mapped what it keeps
                os.close(fd)
        self.send(reply, out_fds)

    def send(self, msg: dict, fds: list[int] = (), close_fds: bool = False):
        if self.closed:
            return
        self.out.append((ctl.encode(msg), list(fds), close_fds))
        self._flush()

    def _flush(self):
        while self.out:
            data, fds, close_fds = self.out[0]
            try:
                if fds:
                    n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", fds))])
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError:
                return self.close()
            self.server.sent_fds(fds)
            if n < len(data):
                self.out[0] = (data[n:], [], False)
                continue
            self.out.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def _writable(self):
        self._flush()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        for _data, fds, _ in self.out:
            self.server.sent_fds(fds)
        self.out.clear()
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()
        self.server.closed(self)


class ControlServer:
    def __init__(self, loop, path: str | None, handler, on_close, sent_fds,
                 listen_sock: socket.socket | None = None):
        """Listen on path (or an inherited socket, for systemd socket activation)."""
        self.loop = loop
        self.handler = handler
        self.on_close = on_close
        self.sent_fds = sent_fds
        self.connections: set[Connection] = set()
        owned = listen_sock is None         # a socket systemd passed is systemd's to remove
        if owned:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                _remove_stale(path)
            listen_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listen_sock.bind(path)
            os.chmod(path, 0o660)
            listen_sock.listen(128)
        self.path = path if owned else None
        self.sock = listen_sock
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept: %s", exc)
                return
            s.setblocking(False)
            self.connections.add(Connection(self, s))

    def closed(self, conn: Connection):
        self.connections.discard(conn)
        self.on_close(conn)

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        for conn in list(self.connections):
            conn.close()
        self.sock.close()
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


_FDS_SPACE = socket.CMSG_SPACE(ctl.MAX_FDS * array.array("i").itemsize)


def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """recvmsg with MSG_CMSG_CLOEXEC (socket.recv_fds ignores flags): received fds must not
    leak into anything the daemon might exec."""
    data, ancdata, _flags, _addr = sock.recvmsg(1 << 16, _FDS_SPACE, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _remove_stale(path: str):
    """Refuse to steal a live daemon's socket; remove a dead one's."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another rnicd is already listening on {path}")

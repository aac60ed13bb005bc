"""The one exception type of the rnic client: an errno code plus a message a person can act on.

Errors the daemon reports (error replies on the control socket) and errors the client library
finds itself (bad arguments, a full send queue, an unreachable daemon) are all `RnicError`.
It is an `OSError`, so ``except OSError`` code keeps working, and ``.code == .errno``.
"""
import errno as _errno


class RnicError(OSError):
    """An rnic verb failed. ``code``/``errno`` is the errno value, ``name`` its symbol."""

    def __init__(self, code: int, msg: str = ""):
        code = int(code)
        super().__init__(code, msg)
        self.code = code
        self.name = _errno.errorcode.get(code, str(code))
        self.msg = msg

    def __str__(self) -> str:
        return f"[{self.name}] {self.msg}" if self.msg else self.name

    def __reduce__(self):
        return (type(self), (self.code, self.msg))


def einval(msg: str) -> RnicError:
    return RnicError(_errno.EINVAL, msg)


def enomem(msg: str) -> RnicError:
    return RnicError(_errno.ENOMEM, msg)

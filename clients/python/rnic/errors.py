"""The exception type of the rnic client: an errno code plus a message a person can act on.

Errors the daemon reports (error replies on the control socket) and errors the client library
finds itself (bad arguments, a full send queue, an unreachable daemon) are all `RnicError`.
It is an `OSError` (``.code == .errno``) and pyverbs' `PyverbsRDMAError` (``.error_code``),
so both ``except OSError`` and pyverbs' ``except PyverbsRDMAError`` code keep working.
"""
import errno as _errno
import os as _os

from .pyverbs_error import PyverbsRDMAError


class RnicError(OSError, PyverbsRDMAError):
    """An rnic verb failed. ``code``/``errno``/``error_code`` is the errno value, ``name`` its
    symbol. Constructed as ``RnicError(code, msg)`` (pyverbs' own classes take msg first)."""

    def __init__(self, code: int, msg: str = "", error_code: int | None = None):
        code = int(code)
        OSError.__init__(self, code, msg)
        self.code = code
        # pyverbs' error_code is what the C verb returned: the errno, or -errno for the
        # verbs that return one (ibv_query_gid_table)
        self._error_code = code if error_code is None else error_code
        self.name = _errno.errorcode.get(code, str(code))
        self.msg = msg
        # args[0] as pyverbs words it: "<msg>. Errno: <n>, <strerror>"
        self.args = (f"{msg}. Errno: {code}, {_os.strerror(code)}",)

    def __str__(self) -> str:
        return f"[{self.name}] {self.msg}" if self.msg else self.name

    def __reduce__(self):
        return (type(self), (self.code, self.msg, self._error_code))


def einval(msg: str) -> RnicError:
    return RnicError(_errno.EINVAL, msg)


def enomem(msg: str) -> RnicError:
    return RnicError(_errno.ENOMEM, msg)


def eopnotsupp(msg: str) -> RnicError:
    return RnicError(_errno.EOPNOTSUPP, msg)

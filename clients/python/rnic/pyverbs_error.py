"""pyverbs' exception classes, with pyverbs' shapes (rdma-core 44 pyverbs/pyverbs_error.py).

- ``PyverbsError(msg, error_code=-1)``: the base; with an errno the message becomes
  ``"<msg>. Errno: <n>, <strerror>"``.
- ``PyverbsRDMAError(msg, error_code=-1)``: a verb failed; ``.error_code`` is the errno.
- ``PyverbsUserError(msg)``: the caller's own mistake found by the library.

Every error rnic raises is a ``RnicError`` (rnic.errors), which is both an ``OSError`` and a
``PyverbsRDMAError``: ``except PyverbsRDMAError as ex: ex.error_code`` works on it.
"""
import os


class PyverbsError(Exception):
    def __init__(self, msg, error_code=-1):
        if error_code != -1:
            msg = f"{msg}. Errno: {error_code}, {os.strerror(error_code)}"
        super().__init__(msg)


class PyverbsRDMAError(PyverbsError):
    def __init__(self, msg, error_code=-1):
        super().__init__(msg, error_code)
        self._error_code = error_code

    @property
    def error_code(self) -> int:
        return self._error_code


class PyverbsUserError(PyverbsError):
    def __init__(self, msg):
        super().__init__(msg)


def __getattr__(name):
    if name == "RnicError":     # errors.py imports this module: no import cycle at load time
        from .errors import RnicError
        return RnicError
    raise AttributeError(name)


__all__ = ["PyverbsError", "PyverbsRDMAError", "PyverbsUserError"]

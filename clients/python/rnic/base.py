"""Lifetime rules shared by every rnic object (the pyverbs ``PyverbsCM`` pattern).

- Every object is a context manager; ``close()`` is idempotent.
- A child holds a strong reference to its parents (a QP keeps its PD and CQs alive); a parent
  holds weak references to its children (``add_ref``) and closes them first.
- Closing sends the destroy verb unless the whole connection is going away (the daemon then
  destroys everything created through it), or the object is being garbage-collected: a
  finalizer must not talk on the socket (it could run in the middle of another call on the
  same thread), so it queues the destroy verb, which the next call sends first.
"""
import errno
import weakref

from .errors import RnicError

# Order in which a parent closes its children: users of an object go before the object.
_RANK = {"QP": 0, "QPEx": 0, "AH": 1, "SRQ": 2, "MW": 2.5, "MR": 3, "PD": 4, "XRCD": 4,
         "CQ": 5, "CompChannel": 6}


def close_children(children) -> None:
    """Close every live object of a WeakSet, dependants first; the first error is raised."""
    first = None
    for obj in sorted(list(children), key=lambda o: _RANK.get(type(o).__name__, 9)):
        try:
            obj.close()
        except RnicError as exc:
            first = first or exc
    if first is not None:
        raise first


class RnicCM:
    """Base of the objects that own a daemon object or a mapping."""

    _closed = True          # until __init__ finished: close()/__del__ of a half-built object
    _destroy_verb: str | None = None   # e.g. "dealloc_pd"
    _handle_key: str | None = None     # e.g. "pd"

    def _init_cm(self, ctx) -> None:
        self._ctx = ctx
        self._children = weakref.WeakSet()
        self._closed = False

    def add_ref(self, obj) -> None:
        self._children.add(obj)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RnicError(errno.EBADF, f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Destroy the object (children first). A second call does nothing."""
        if self._closed:
            return
        close_children(self._children)
        if self._destroy_verb is not None:
            self._ctx._destroy(self._destroy_verb, {self._handle_key: self.handle})
        self._closed = True
        self._release_local()

    def unimport(self) -> None:
        """ibv_unimport_pd / _mr: forget an imported object here; it stays in the context
        that shares it (no destroy verb). Closing it afterwards does nothing."""
        if self._closed:
            return
        self._closed = True
        self._release_local()

    def _release_local(self) -> None:
        """Unmap and close what this process holds (no socket traffic). Idempotent."""

    def __del__(self):
        if self._closed:
            return
        try:
            self._closed = True
            if self._destroy_verb is not None:
                self._ctx._defer_destroy(self._destroy_verb, {self._handle_key: self.handle})
            self._release_local()
        except Exception:   # interpreter shutdown, half-built object: nothing left to do
            pass


# ---- pyverbs.base's names ---------------------------------------------------------------
PyverbsCM = RnicCM
PyverbsObject = object


def PyverbsRDMAErrno(msg: str):   # noqa: N802  (pyverbs' name)
    """pyverbs.base.PyverbsRDMAErrno: a PyverbsRDMAError carrying the calling thread's C errno
    (``ctypes.get_errno()``; rnic verbs raise RnicError with the errno themselves)."""
    import ctypes

    from .pyverbs_error import PyverbsRDMAError
    return PyverbsRDMAError(msg, ctypes.get_errno())


def inc_rkey(rkey: int) -> int:
    """ibv_inc_rkey: the next rkey of a memory window, its low 8 bits (the key) incremented."""
    return (rkey & 0xFFFFFF00) | ((rkey + 1) & 0xFF)

"""Verbs rnicd does not offer, with pyverbs' class names so pyverbs code imports unchanged.

Creating such an object fails as it does on an RNIC without the capability: RnicError
(a PyverbsRDMAError) with error_code EOPNOTSUPP; the device's capability fields already say
no (see docs/python-client.md, "What rnicd does not offer"). Their attribute classes are plain
holders, so code that builds attributes before asking runs up to the verb.
"""
import errno

from .errors import RnicError

DOC = "docs/python-client.md"


def not_offered(what: str) -> RnicError:
    return RnicError(errno.EOPNOTSUPP, f"{what} is not offered by rnicd (see {DOC})")


class NotOffered:
    """Base of the verb objects rnicd does not offer: construction raises EOPNOTSUPP."""

    _what = "this verb"

    def __init__(self, *args, **kwargs):
        raise not_offered(self._what)

    def close(self) -> None:
        """Nothing was created."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class AttrHolder:
    """A plain attribute structure: positional arguments fill ``_fields`` in order."""

    _fields: tuple = ()

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} "
                            f"positional arguments")
        for f in self._fields:
            setattr(self, f, None)
        for f, v in zip(self._fields, args, strict=False):
            setattr(self, f, v)
        for k, v in kwargs.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({body})"


def verb_classes(namespace: dict, what: str, *names: str) -> None:
    """Define NotOffered subclasses ``names`` in a module namespace."""
    for n in names:
        namespace[n] = type(n, (NotOffered,), {"_what": f"{what} ({n})",
                                               "__module__": namespace["__name__"]})


def attr_classes(namespace: dict, *names: str) -> None:
    for n in names:
        namespace[n] = type(n, (AttrHolder,), {"__module__": namespace["__name__"]})

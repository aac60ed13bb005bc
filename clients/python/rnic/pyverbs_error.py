"""pyverbs' exception names, for code ported from pyverbs: all of them are `RnicError`."""
from .errors import RnicError

PyverbsError = RnicError
PyverbsRDMAError = RnicError
PyverbsUserError = RnicError

__all__ = ["PyverbsError", "PyverbsRDMAError", "PyverbsUserError", "RnicError"]

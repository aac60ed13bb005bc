"""Errors the daemon reports to clients: errno-style code plus a message a person can act on."""
import errno


class VerbsError(Exception):
    """API misuse or an impossible request; becomes an error reply with `code`."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


def einval(msg: str) -> VerbsError:
    return VerbsError(errno.EINVAL, msg)


def enoent(msg: str) -> VerbsError:
    return VerbsError(errno.ENOENT, msg)

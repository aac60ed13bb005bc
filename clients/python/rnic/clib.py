"""Where the package keeps its C libraries (libibverbs.so.1 and librdmacm.so.1 for rnicd,
clients/c) and how `rnic exec` runs an unmodified RDMA program on them."""
import os

LIBDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
LIBRARIES = ("libibverbs.so.1", "librdmacm.so.1")


def libdir() -> str:
    """The private directory holding the libraries (`rnic libdir`)."""
    return LIBDIR


def missing() -> list[str]:
    """The libraries not built into libdir() (empty when all are there)."""
    return [n for n in LIBRARIES if not os.path.exists(os.path.join(LIBDIR, n))]


def exec_env(socket: str, environ=None) -> dict:
    """The environment a program runs with on rnicd: libdir() first on LD_LIBRARY_PATH, and
    RNIC_SOCKET naming the daemon."""
    env = dict(os.environ if environ is None else environ)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = LIBDIR + (os.pathsep + old if old else "")
    env["RNIC_SOCKET"] = socket
    return env

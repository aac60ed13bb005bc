"""pyverbs.fork: ibv_fork_init / ibv_is_fork_initialized.

rnic's memory is memfd-backed and shared with the daemon, not pinned: a fork child sees the
same pages and the parent's registrations stay valid, so fork support is not needed
(IBV_FORK_UNNEEDED, as libibverbs reports on kernels with copy-on-fork for pinned pages)."""
from rnicd.wire.abi import IBV_FORK_UNNEEDED


def fork_init() -> None:
    """ibv_fork_init: nothing to set up."""


def is_fork_initialized() -> int:
    return IBV_FORK_UNNEEDED

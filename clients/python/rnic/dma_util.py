"""pyverbs.dma_util: memory barriers and MMIO writes for user-space drivers. rnic has no
MMIO; its rings use C11 acquire/release in the data plane, so the barriers are no-ops here
and the MMIO writes are refused."""
from ._unsupported import not_offered


def udma_to_dev_barrier() -> None:
    """Ordering of ring writes before a doorbell: rnic's doorbell is a syscall (a barrier)."""


def udma_from_dev_barrier() -> None:
    """Ordering of ring reads after a CQE is seen: done by the ring code itself."""


def mmio_write32_as_be(addr, val) -> None:
    raise not_offered("MMIO (mmio_write32_as_be)")


def mmio_write64_as_be(addr, val) -> None:
    raise not_offered("MMIO (mmio_write64_as_be)")

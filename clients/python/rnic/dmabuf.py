"""pyverbs.dmabuf: rnicd offers no dma-buf memory (EOPNOTSUPP)."""
from ._unsupported import verb_classes

verb_classes(globals(), "dma-buf memory", "DmaBuf")

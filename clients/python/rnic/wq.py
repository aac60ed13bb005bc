"""pyverbs.wq: rnicd offers no work queues / RSS (EOPNOTSUPP); attributes are plain holders."""
from ._unsupported import attr_classes, verb_classes

verb_classes(globals(), "work queues and RSS indirection tables", "WQ", "RwqIndTable")
attr_classes(globals(), "WQInitAttr", "WQAttr", "RwqIndTableInitAttr", "RxHashConf")

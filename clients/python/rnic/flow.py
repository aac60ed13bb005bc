"""pyverbs.flow: rnicd offers no flow steering (EOPNOTSUPP); FlowAttr is a plain holder."""
from ._unsupported import attr_classes, verb_classes

verb_classes(globals(), "flow steering", "Flow", "FlowAction")
attr_classes(globals(), "FlowAttr")

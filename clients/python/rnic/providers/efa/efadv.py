"""EFA direct verbs: every object refuses rnic0 (EOPNOTSUPP), which is not an EFA device."""
from ..._unsupported import verb_classes

verb_classes(globals(), "EFA direct verbs on a non-EFA device",
             "EfaAH", "EfaCQ", "EfaContext", "EfaDVAHAttr", "EfaDVCQInitAttr",
             "EfaDVDeviceAttr", "EfaQPInitAttr", "SRDQP", "SRDQPEx")

"""mlx5 direct verbs: every object refuses rnic0 (EOPNOTSUPP), which is not an mlx5 device."""
from ..._unsupported import verb_classes

verb_classes(globals(), "mlx5 direct verbs on a non-mlx5 device",
             "Mlx5CQ", "Mlx5Context", "Mlx5Cqe64", "Mlx5DCIStreamInitAttr", "Mlx5DVCQInitAttr",
             "Mlx5DVContext", "Mlx5DVContextAttr", "Mlx5DVDCInitAttr", "Mlx5DVPortAttr",
             "Mlx5DVQPInitAttr", "Mlx5DevxEq", "Mlx5DevxMsiVector", "Mlx5DevxObj",
             "Mlx5DmOpAddr", "Mlx5PP", "Mlx5QP", "Mlx5UAR", "Mlx5UMEM", "Mlx5VAR",
             "Mlx5VfioAttr", "Wqe", "WqeCtrlSeg", "WqeDataSeg", "WqeSeg")

"""mlx5 direct-verbs objects: refuse rnic0 (EOPNOTSUPP), which is not an mlx5 device."""
from ..._unsupported import verb_classes

verb_classes(globals(), "mlx5 direct verbs on a non-mlx5 device",
             "Mlx5DvCQ", "Mlx5DvObj", "Mlx5DvPD", "Mlx5DvQP", "Mlx5DvSRQ")

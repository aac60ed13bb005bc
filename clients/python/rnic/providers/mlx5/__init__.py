"""pyverbs.providers.mlx5: rnic0 is not an mlx5 device (see rnic.providers)."""

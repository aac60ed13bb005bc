"""pyverbs.providers.efa: rnic0 is not an EFA device (see rnic.providers)."""

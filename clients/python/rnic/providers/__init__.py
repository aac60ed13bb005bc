"""Vendor direct verbs (pyverbs.providers): rnic0 is no vendor's device, so each provider's
context refuses it with EOPNOTSUPP, as the vendor library does on another vendor's device."""

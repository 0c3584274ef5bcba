"""A third-party resconf backend: the user's own PyTorch Pre-LN block, checked by `resconf check`."""

"""The float64 oracle, the emulated lower-precision baseline, and the positive controls built on them."""

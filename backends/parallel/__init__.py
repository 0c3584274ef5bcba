"""Tensor-parallel layers: the split, the process launcher, and the torch and JAX TP/SP layers."""

"""Fused add+norm kernels: our Triton and numba kernels, and Liger-Kernel's."""

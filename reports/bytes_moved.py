"""The bytes each benchmarked operation must move at least: the numerator of every GB/s we report.

This is the one place the formulas live; the asv export (reports/bench_export.py) divides them by the
measured time, and docs/benchmarks.md quotes them. They count each tensor an ideal single-pass kernel has
to read or write once, in the benchmarked dtype; row statistics (mean, rstd: one float per row) are left
out as negligible next to the (tokens, hidden) tensors. A framework that makes extra passes moves more than
this, so its GB/s is an *effective* bandwidth, the figure to compare with the copy roofline.
"""
from __future__ import annotations

from functools import partial
from typing import Callable


def fused_add_norm_bytes(tokens: int, hidden: int, itemsize: int, with_bias: bool, backward: bool) -> int:
    """Fused add+norm, forward or forward+backward with only g_out flowing back.

    forward:  read x, residual (tokens*hidden each) and weight (+ bias) (hidden each);
              write out and the new residual (tokens*hidden each)          -> 4*T*H + (1 + bias)*H
    backward: read g_out, the saved new residual (T*H each) and weight (H);
              write dx (T*H; dresidual is the same tensor without g_residual), dweight (+ dbias) (H each)
                                                                             -> 3*T*H + (2 + bias)*H
    """
    bias = int(with_bias)
    elements = 4 * tokens * hidden + (1 + bias) * hidden
    if backward:
        elements += 3 * tokens * hidden + (2 + bias) * hidden
    return elements * itemsize


def copy_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """dst[:] = src: one read and one write of (tokens, hidden). Its GB/s is the roofline."""
    return 2 * tokens * hidden * itemsize


def add_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """out[:] = a + b: two reads and one write of (tokens, hidden), the traffic of an unfused residual add."""
    return 3 * tokens * hidden * itemsize


# op name (an asv method's name without "time_") -> bytes(tokens, hidden, itemsize). An op not listed here
# (the Pre-LN stack: matmul-bound) has no bandwidth figure.
BYTES_MOVED: dict[str, Callable[[int, int, int], int]] = {
    "add_rmsnorm_forward": partial(fused_add_norm_bytes, with_bias=False, backward=False),
    "add_layernorm_forward": partial(fused_add_norm_bytes, with_bias=True, backward=False),
    "add_rmsnorm_forward_backward": partial(fused_add_norm_bytes, with_bias=False, backward=True),
    "add_layernorm_forward_backward": partial(fused_add_norm_bytes, with_bias=True, backward=True),
    "copy": copy_bytes,
    "copy_all_cores": copy_bytes,
    "add": add_bytes,
    "add_all_cores": add_bytes,
}
# The byte model of each op in words, for a flag on a figure above the roofline (reports/roofline_flags.py).
BYTE_MODELS: dict[str, str] = {
    "add_rmsnorm_forward": "4·T·H + H elements",
    "add_layernorm_forward": "4·T·H + 2·H elements",
    "add_rmsnorm_forward_backward": "7·T·H + 3·H elements",
    "add_layernorm_forward_backward": "7·T·H + 5·H elements",
    "copy": "2·T·H elements",
    "copy_all_cores": "2·T·H elements",
    "add": "3·T·H elements",
    "add_all_cores": "3·T·H elements",
}
# The streaming kernels measured on every device and shape; the best of their GB/s is the roofline, the
# denominator of roofline_fraction. Several, because any one can under-measure the machine: a copy on one
# thread cannot saturate memory, and under write-allocate caches an add counts more GB/s than a copy.
ROOFLINE_OPS = ("copy", "copy_all_cores", "add", "add_all_cores")

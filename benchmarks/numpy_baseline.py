"""The `numpy` row of the fused add+norm benchmarks: what a NumPy user writes, unfused, in the dtype.

x + residual, then the norm, then the affine, each a whole-array NumPy expression in float32 (or float64),
and the hand-derived backward for a cotangent on `out` only. It is the baseline the fused kernels are
measured against. The float64 oracle (backends/oracle/numpy_ref.py) is the reference for *correctness* and is
never meant to be fast, so it is not what this row times.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from resconf.backends.base import Backend, Capabilities, dtype_error
from resconf.backends.config import FUSED_KINDS
from resconf.backends.dtypes import claims, numpy_dtype

EPS = 1e-5


def _normalize(s: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, rstd): s normalised over the last axis, and 1 / sqrt(var + eps) per row (keepdims)."""
    c = s - s.mean(axis=-1, keepdims=True) if kind == "layernorm" else s
    rstd = 1.0 / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + EPS)
    return c * rstd, rstd


def add_norm_forward(x, residual, weight, bias, g_out, *, kind: str):
    """(norm(x + residual) * weight (+ bias), x + residual)."""
    s = x + residual  # the new residual (T, H)
    n, _ = _normalize(s, kind)
    out = n * weight if bias is None else n * weight + bias
    return out, s


def add_norm_forward_backward(x, residual, weight, bias, g_out, *, kind: str):
    """The forward, then the gradients of <g_out, out>: (out, new_residual, d_sum, dweight, dbias).

    d_sum is both dx and dresidual (the sum's gradient). With gn = g_out * weight and n the normalised sum:
    rmsnorm d_sum = rstd * (gn - n * mean(gn * n)); layernorm subtracts mean(gn) as well.
    """
    s = x + residual
    n, rstd = _normalize(s, kind)
    out = n * weight if bias is None else n * weight + bias
    gn = g_out * weight
    centred = gn - gn.mean(axis=-1, keepdims=True) if kind == "layernorm" else gn
    d_sum = rstd * (centred - n * np.mean(gn * n, axis=-1, keepdims=True))
    dweight = np.sum(g_out * n, axis=0)
    dbias = None if bias is None else np.sum(g_out, axis=0)
    return out, s, d_sum, dweight, dbias


class NumpyBaseline(Backend):
    """Offers only the benchmark hooks; it is not registered, so the conformance suite never runs it."""

    name = "numpy"
    devices = ("cpu",)

    @property
    def capabilities(self) -> Capabilities:
        # bfloat16 is left out on purpose: ml_dtypes emulates it elementwise, which times the emulation.
        return Capabilities(dtypes=claims("float64", "float32"), fused_kinds=frozenset(FUSED_KINDS),
                            blocks=False)

    def to_native(self, a: np.ndarray, dtype: str) -> np.ndarray:
        if dtype not in self.capabilities.dtypes:
            raise dtype_error(self, dtype)
        return np.ascontiguousarray(a, numpy_dtype(dtype))

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        return partial(add_norm_forward_backward if backward else add_norm_forward, kind=kind)

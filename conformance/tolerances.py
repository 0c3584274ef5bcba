"""The one tolerance table. Tests read it; no test holds a tolerance literal.

Agreement is measured normwise: err = ||out - ref|| / ||ref||, ref computed by the float64 oracle on
inputs and parameters already rounded to the dtype, so only the backend's own intermediate
roundings remain. Each rounding of a value contributes at most u = 2^-p relative error (p = the
significand's bits). A block does a handful of roundings in sequence (norm, two matmuls whose
float32-or-better accumulators add ~sqrt(n) u in the probabilistic bound of Higham & Mary, GELU, the
final add); the output y = x + F is dominated by x, so the forward error is a few u: we allow
FORWARD_ULPS. The backward pass does about twice the work and passes through the norm's Jacobian,
whose centering subtracts nearly equal numbers: we allow GRADIENT_ULPS. Over a stack of L blocks the
per-block errors are independent with mean ~0 and add in quadrature, so both grow as sqrt(L).

Calibrated by tests/test_tolerances.py (24 stacks of depth 4, every dtype): the worst errors seen
were 2.0 u forward and 8.8 u for gradients (jax float64; torch 1.7 u and 8.1 u), against allowances
of 8 u and 32 u at that depth, so correct backends keep a margin of over 3x while a skip scaled by
(1 + 2^-10) fails in float32 and float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from resconf.backends.dtypes import unit_roundoff

FORWARD_ULPS = 4.0
GRADIENT_ULPS = 16.0


@dataclass(frozen=True)
class Tolerance:
    forward: float  # normwise relative error allowed for values
    gradient: float  # normwise relative error allowed for VJPs


def tolerance(dtype: str, depth: int = 1, reduction: int = 1) -> Tolerance:
    """Tolerance for a stack of `depth` blocks computed in `dtype`.

    `reduction`: for a bare norm output (fused add+norm), the length C of the mean/variance reductions.
    In a block the output x + F is dominated by the skip, so the norm's reduction error hardly shows; a
    bare normalised output carries it whole. A tree reduction (GPU kernels, vectorised CPU loops) rounds
    each value at most log2(C) times, independent errors add in quadrature: factor sqrt(1 + log2 C)."""
    scale = unit_roundoff(dtype) * math.sqrt(depth) * math.sqrt(1.0 + math.log2(reduction))
    return Tolerance(forward=FORWARD_ULPS * scale, gradient=GRADIENT_ULPS * scale)


def summation_bound(dtype: str, n_terms: int) -> float:
    """Recursive summation of n terms: |fl(sum) - sum| <= (n - 1) u sum|terms| (Higham, ch. 4). A backend
    may also report each branch output rounded apart from the value it added (one more u per term),
    so we allow 2 n u."""
    return 2.0 * n_terms * unit_roundoff(dtype)

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

The constants were calibrated (tests/test_tolerances.py) so torch, jax and numpy pass across many
seeds with a margin of at least 2x over the worst error seen, and stay tight enough that a skip
scaled by (1 + 2^-10) fails in float32 and float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from backends.dtypes import unit_roundoff

FORWARD_ULPS = 16.0
GRADIENT_ULPS = 64.0
# float64 differs from the oracle only by operation order; tiny sums of cancelling terms in layernorm
# gradients make the relative error a few hundred u at worst, still 1e-13.
FLOAT64_FLOOR = 1e-12


@dataclass(frozen=True)
class Tolerance:
    forward: float  # normwise relative error allowed for values
    gradient: float  # normwise relative error allowed for VJPs


def tolerance(dtype: str, depth: int = 1) -> Tolerance:
    """Tolerance for a stack of `depth` blocks computed in `dtype`."""
    u = unit_roundoff(dtype)
    growth = math.sqrt(depth)
    floor = FLOAT64_FLOOR if dtype == "float64" else 0.0
    return Tolerance(forward=max(FORWARD_ULPS * u * growth, floor),
                     gradient=max(GRADIENT_ULPS * u * growth, floor))


def table() -> dict[str, Tolerance]:
    """The table at depth 1, for documentation and result rows."""
    return {dtype: tolerance(dtype) for dtype in ("float64", "float32", "bfloat16", "float16")}


def summation_bound(dtype: str, n_terms: int) -> float:
    """Recursive summation of n terms: |fl(sum) - sum| <= (n - 1) u sum|terms| (Higham, ch. 4). A backend
    may also report each branch output rounded apart from the value it added (one more u per term),
    so we allow 2 n u."""
    return 2.0 * n_terms * unit_roundoff(dtype)

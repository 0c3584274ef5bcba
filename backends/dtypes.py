"""Dtype names, rounding and unit roundoff, without importing any framework (ml_dtypes gives bfloat16)."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from resconf.backends.config import DTYPES

NUMPY_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}


def numpy_dtype(name: str) -> np.dtype:
    if name not in NUMPY_DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {DTYPES}")
    return NUMPY_DTYPES[name]


def round_to(a: np.ndarray, name: str) -> np.ndarray:
    """a rounded to dtype `name` (round to nearest even), returned as float64: exactly representable."""
    return np.asarray(a, dtype=np.float64).astype(numpy_dtype(name)).astype(np.float64)


def unit_roundoff(name: str) -> float:
    """u = 2^-p for a p-bit significand: the worst relative error of one rounding."""
    return float(ml_dtypes.finfo(numpy_dtype(name)).eps) / 2.0


def max_finite(name: str) -> float:
    return float(ml_dtypes.finfo(numpy_dtype(name)).max)

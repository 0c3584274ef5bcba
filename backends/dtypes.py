"""The dtypes the suite knows: one record each, read by the strategies, the emulated baseline, the budgets,
the adapters and the tests. Adding a dtype is one row here (plus the frameworks' tables of their own types,
backends/torch/dtypes.py and backends/jax/dtypes.py, where a framework has it). Imports no framework.
ml_dtypes gives bfloat16 and the float8 types to NumPy; it is imported on first use, not here: importing it
takes ~1 s (ml_dtypes 0.7), which every process would pay, the CLI and the workers of float32 subsets too."""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DTypeInfo:
    """A floating-point format as the suite reasons about it."""

    name: str  # the suite's name, also the pytest id and the results column's value
    numpy_type: str  # its NumPy type by qualified name: "numpy.float32", or "ml_dtypes.bfloat16" where NumPy lacks it
    # Frameworks compute a narrow dtype's reductions, norms and matmul sums in float32 and round once at the
    # end (cuBLAS, PyTorch's CPU kernels, XLA); the emulated baseline and the budgets model exactly that.
    accumulates_in: str

    @functools.cached_property
    def numpy(self) -> np.dtype:
        """Its NumPy (or ml_dtypes) type: rounding to it is `astype`, round to nearest even."""
        module, _, attribute = self.numpy_type.rpartition(".")
        return np.dtype(getattr(importlib.import_module(module), attribute))

    @property
    def narrow(self) -> bool:
        """Computed through a wider accumulator (bfloat16, float16): not float32 or float64."""
        return self.accumulates_in != self.name

    @property
    def bits(self) -> int:
        return self.numpy.itemsize * 8

    @property
    def significand_bits(self) -> int:
        """p, counting the implicit bit: 53, 24, 8, 11."""
        return int(_finfo(self.numpy).nmant) + 1

    @property
    def unit_roundoff(self) -> float:
        """u = 2^-p: the worst relative error of one rounding to nearest."""
        return float(_finfo(self.numpy).eps) / 2.0

    @property
    def max_finite(self) -> float:
        return float(_finfo(self.numpy).max)

    @property
    def smallest_normal(self) -> float:
        return float(_finfo(self.numpy).smallest_normal)


def _finfo(dtype: np.dtype):
    """ml_dtypes.finfo for the types NumPy lacks, NumPy's own for the rest (same fields)."""
    return np.finfo(dtype) if dtype.kind == "f" else importlib.import_module("ml_dtypes").finfo(dtype)


def _info(name: str, numpy_type: str | None = None, accumulates_in: str | None = None) -> DTypeInfo:
    return DTypeInfo(name=name, numpy_type=numpy_type or f"numpy.{name}", accumulates_in=accumulates_in or name)


# Widest first: the order of the pytest ids, the results and the report's columns.
DTYPE_INFO: dict[str, DTypeInfo] = {info.name: info for info in (
    _info("float64"),
    _info("float32"),
    _info("bfloat16", "ml_dtypes.bfloat16", accumulates_in="float32"),
    _info("float16", accumulates_in="float32"),
)}
DTYPES: tuple[str, ...] = tuple(DTYPE_INFO)
NARROW_DTYPES: tuple[str, ...] = tuple(name for name, info in DTYPE_INFO.items() if info.narrow)


def dtype_info(name: str) -> DTypeInfo:
    if name not in DTYPE_INFO:
        raise ValueError(f"dtype {name!r} is not one of {DTYPES}")
    return DTYPE_INFO[name]


def numpy_dtype(name: str) -> np.dtype:
    return dtype_info(name).numpy


def round_to(a: np.ndarray, name: str) -> np.ndarray:
    """a rounded to dtype `name` (round to nearest even), returned as float64: exactly representable."""
    return np.asarray(a, dtype=np.float64).astype(numpy_dtype(name)).astype(np.float64)


def unit_roundoff(name: str) -> float:
    return dtype_info(name).unit_roundoff


def max_finite(name: str) -> float:
    return dtype_info(name).max_finite


def smallest_normal(name: str) -> float:
    return dtype_info(name).smallest_normal


def element_bytes(name: str) -> int:
    """Bytes per element, as a benchmark counts the memory it moves."""
    return dtype_info(name).bits // 8


def accumulation_dtype(name: str) -> str:
    """The dtype a framework sums `name` in: float32 for the narrow dtypes, else the dtype itself."""
    return dtype_info(name).accumulates_in


def claims(*names: str) -> frozenset[str]:
    """A backend's dtype claim, by name (never `frozenset(DTYPES)`: a new dtype must be claimed on purpose)."""
    for name in names:
        dtype_info(name)
    return frozenset(names)

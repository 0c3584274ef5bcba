"""Positive controls: correct backends that round differently on purpose.

Each is the oracle's own code run in the working dtype with another legitimate arithmetic
(backends/oracle/emulated.py): float32 accumulation for bfloat16/float16 (float64 for `control_wide`), every
framework-level operation rounded once, and its own order of summation. A correct backend may do any of
these, so every control must pass every property it claims (tests/test_controls.py); a budget that fails
one is too tight. `baseline` is the arithmetic every error budget measures the case with
(conformance/budgets.py): the least accurate of the legitimate orders, one term after another (its error
grows as sqrt(n) where a tree's grows as sqrt(log n)), and every float32/float64 primitive faithful rather
than correctly rounded, so that even in float64 its rounding is independent of the oracle's, as a real
framework's is.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.base import FusedGrads, StackGrads, StackTrace
from resconf.backends.config import BlockConfig
from resconf.backends.oracle.emulated import Arithmetic, using
from resconf.backends.dtypes import round_to
from resconf.backends.fused_args import residual_dtype
from resconf.backends.modes import DEFAULT_MODE, check_mode
from resconf.backends import contract
from resconf.backends.oracle.numpy_ref import NumpyReference, _checked_stream
from resconf.backends.params import LayerParams


def _f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


class EmulatedReference(NumpyReference):
    """The oracle's maths in the working dtype, summed in `order` (see backends/oracle/emulated.py)."""

    name = "emulated"
    computes_in_float64 = False  # every operation rounds to the working dtype
    order = "blas"
    fma = False
    wide = False
    faithful = False

    def __init__(self, device: str = "cpu", seed: int = 0, mode: str = DEFAULT_MODE, target: str = "cpu") -> None:
        super().__init__(device)
        self.seed = seed  # of the faithful perturbations: another seed is another legitimate draw
        # round as a backend in execution mode `mode` does on device `target` (backends/modes.py)
        self.rounding = check_mode(mode).arithmetic_fields(target)
        self.parameters = check_mode(mode).parameters  # held in this dtype (bfloat16 sublayers), or None

    def arithmetic(self, dtype: str) -> Arithmetic:
        return Arithmetic(dtype, self.order, self.fma, self.wide, self.faithful, self.seed, **self.rounding)

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "arithmetic": f"{self.order}{'+fma' if self.fma else ''}"
                f"{', float64 accumulation' if self.wide else ''}"}

    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        x = _checked_stream(cfg, params, x)
        with using(self.arithmetic(dtype)) as cast:
            trace = ref.stack_forward(cfg, cast(self._held(params)), cast(x))
        return StackTrace(states=_f64(trace.states), writes=_f64(trace.writes),
                          final=None if trace.final is None else _f64(trace.final))

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        x = _checked_stream(cfg, params, x)
        with using(self.arithmetic(dtype)) as cast:
            grads = ref.stack_vjp(cfg, cast(self._held(params)), cast(x), cast(np.asarray(g, dtype=np.float64)))
        return StackGrads(dx=_f64(grads.dx), dparams=tuple(self._held(p.map(_f64) for p in grads.dparams)))

    def _held(self, params):
        """Parameters (or their gradients) rounded to the dtype the mode holds parameters in, if it has one: a
        parameter's gradient has the parameter's dtype."""
        if self.parameters is None:
            return tuple(params)
        return tuple(p.map(lambda t: round_to(t, self.parameters)) for p in params)

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        contract.check_fused_shapes(x, residual, weight, bias)  # NumPy would broadcast: the control's own guard
        rdtype = residual_dtype(dtype, residual_in_fp32)
        with using(self.arithmetic(dtype)) as cast:
            out, s = ref.fused_add_norm(cast(x), _residual(cast, residual, rdtype), cast(weight), cast(bias),
                                        eps, kind, rdtype)
        return _f64(out), _f64(s)

    def _fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                            residual_in_fp32=False) -> FusedGrads:
        contract.check_fused_shapes(x, residual, weight, bias)
        rdtype = residual_dtype(dtype, residual_in_fp32)
        with using(self.arithmetic(dtype)) as cast:
            grads = ref.fused_add_norm_vjp(cast(x), _residual(cast, residual, rdtype), cast(weight), cast(bias),
                                           eps, kind, rdtype, cast(g_out), _residual(cast, g_residual, rdtype))
        return FusedGrads(*(None if t is None else _f64(t) for t in astuple_shallow(grads)))


def astuple_shallow(obj) -> tuple:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))


def _residual(cast, a: np.ndarray, rdtype: str):
    """A float32 residual (residual_in_fp32) stays float32; otherwise it is in the working dtype."""
    return cast(a) if rdtype != "float32" else np.asarray(a, dtype=np.float32)


class Baseline(EmulatedReference):
    name = "baseline"
    order = "sequential"
    faithful = True


class ReversedControl(EmulatedReference):
    name = "control_reversed"
    order = "reversed"


class FmaControl(EmulatedReference):
    name = "control_fma"
    order = "sequential"
    fma = True


class PairwiseControl(EmulatedReference):
    name = "control_pairwise"
    order = "pairwise"


class BlockedControl(EmulatedReference):
    name = "control_blocked"
    order = "blocked"


class WideControl(EmulatedReference):
    name = "control_wide"
    order = "blas"
    wide = True


CONTROLS = (ReversedControl, FmaControl, PairwiseControl, BlockedControl, WideControl)

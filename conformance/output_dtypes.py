"""Every output a backend hands the suite, held to the dtype asked: the one place outputs are checked.

The array contract (docs/adapter.md): results are float64 NumPy whose values are values of `dtype`. A result
left in float32 where bfloat16 was asked is more accurate than the dtype allows, so it passes every error
budget while the adapter does not compute what it claims; here it fails, naming the backend, the method, the
output and both dtypes. The `subject` fixture (conformance/plugin_backends.py) hands every property its backend wrapped
in `Checked`. The oracle is exempt: it computes in float64 whatever the dtype (`Backend.computes_in_float64`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from resconf.backends.base import Backend, FusedGrads, StackGrads, StackTrace
from resconf.backends.dtypes import DTYPE_INFO, DTYPES, numpy_dtype
from resconf.backends.fused_args import residual_dtype

WIDENING = DTYPES[::-1]  # narrowest first: the first that holds every value names what came


def holds(dtype: str, a: np.ndarray) -> bool:
    """Whether every finite value of `a` is a value of `dtype` (NaN and Inf are any dtype's)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        back = a.astype(numpy_dtype(dtype)).astype(np.float64)
    return bool(np.all((back == a) | ~np.isfinite(a)))


def returned_dtype(a: np.ndarray) -> str:
    """The narrowest float dtype holding every value of `a` (the array's own, when it is not float64)."""
    own = np.asarray(a).dtype
    if own.kind != "f" and own not in {info.numpy for info in DTYPE_INFO.values()}:
        return str(own)
    return next((d for d in WIDENING if holds(d, a)), str(own))


def check(backend: Backend, method: str, outputs: Iterable[tuple[str, np.ndarray | None, str]]) -> None:
    """Each (what, array, dtype asked) of one call: an AssertionError at the first array outside its dtype."""
    if backend.computes_in_float64:
        return
    for what, a, dtype in outputs:
        if a is not None and not holds(dtype, a):
            raise AssertionError(f"backend {backend.name!r} {method} returned {what} in {returned_dtype(a)} where "
                                 f"{dtype} was asked: return float64 NumPy holding {dtype} values "
                                 "(docs/adapter.md, the array contract)")


def _trace(t: StackTrace, dtype: str):
    return [("states", t.states, dtype), ("writes", t.writes, dtype), ("final", t.final, dtype)]


def _grads(g: StackGrads, dtype: str):
    return [("d x_0", g.dx, dtype)] + [(f"d {name} in layer {layer}", t, dtype)
                                       for layer, p in enumerate(g.dparams) for name, t in p.items()]


class Checked:
    """`backend` with every result checked (check above); anything else is the backend's own."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return repr(self.backend)

    def stack_forward(self, cfg, params, x, dtype):
        trace = self.backend.stack_forward(cfg, params, x, dtype)
        check(self.backend, "stack_forward", _trace(trace, dtype))
        return trace

    def stack_vjp(self, cfg, params, x, g, dtype):
        grads = self.backend.stack_vjp(cfg, params, x, g, dtype)
        check(self.backend, "stack_vjp", _grads(grads, dtype))
        return grads

    def tp_stack_forward(self, cfg, params, x, dtype, ranks):
        trace = self.backend.tp_stack_forward(cfg, params, x, dtype, ranks)
        check(self.backend, "tp_stack_forward", _trace(trace, dtype))
        return trace

    def tp_stack_vjp(self, cfg, params, x, g, dtype, ranks):
        grads = self.backend.tp_stack_vjp(cfg, params, x, g, dtype, ranks)
        check(self.backend, "tp_stack_vjp", _grads(grads, dtype))
        return grads

    def fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        out, new_residual = self.backend.fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
        check(self.backend, "fused_add_norm", [("out", out, dtype),
                                               ("the residual", new_residual, residual_dtype(dtype, residual_in_fp32))])
        return out, new_residual

    def fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                           residual_in_fp32=False) -> FusedGrads:
        grads = self.backend.fused_add_norm_vjp(x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                                                residual_in_fp32)
        wide = residual_dtype(dtype, residual_in_fp32)  # x + residual is summed in it: its gradient may stay there
        check(self.backend, "fused_add_norm_vjp", [("dx", grads.dx, wide), ("dresidual", grads.dresidual, wide),
                                                   ("dweight", grads.dweight, dtype), ("dbias", grads.dbias, dtype)])
        return grads

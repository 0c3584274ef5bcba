"""Another legitimate arithmetic for the oracle's own code: the working dtype, float32 (or wider)
accumulation, and a chosen summation order.

A framework computes each operation (a linear layer, a norm, GELU, attention) in an accumulation dtype and
rounds its output once to the working dtype; the glue between operations (the residual add, a gate) is
plain arithmetic in the working dtype. Under `using(Arithmetic(...))` the oracle's code runs exactly so:
  - numpy_ops marks each framework-level operation with @op: its array arguments are taken to the
    accumulation dtype, it runs, and its array results are rounded once to the working dtype (a nested @op
    runs inside the outer one, as in a fused kernel);
  - arrays are `Ordered` views in their real dtype (NumPy float16/32/64, ml_dtypes bfloat16), so glue
    arithmetic rounds as the framework's would, and every matmul and sum follows the arithmetic's order.
With no arithmetic active, @op does nothing: the oracle computes in float64 as written.

Orders (how a dot product or sum of n terms is associated; each is what some real kernel does):
  blas        NumPy's own (BLAS gemm, pairwise sums)     reversed    the same, the terms reversed
  sequential  one term after another (a linear layer's    pairwise    a balanced tree
              starting from its bias, see EMULATED_AS)
  blocked     blocks of BLOCK terms, then the blocks in sequence (split-K GPU kernels)
`fma` contracts each sequential step a*b + acc into one rounding; `wide` accumulates bfloat16/float16 in
float64 instead of float32. `faithful` makes every float32/float64 library function (exp, tanh, erf,
...) faithful rather than correctly rounded, as vendor math libraries are: its result is perturbed by a
seeded random relative amount of at most u. Without it, float64 arithmetic would reproduce the oracle's
own rounding bit for bit wherever the order does not matter, where two independent implementations
differ by a few ulps.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from resconf.backends.dtypes import DTYPE_INFO, accumulation_dtype, numpy_dtype

ORDERS = ("blas", "reversed", "sequential", "pairwise", "blocked")
BLOCK = 16  # terms per block of the blocked order (a typical split-K tile)


@functools.cache
def accumulators() -> dict[np.dtype, np.dtype]:
    """A narrow dtype's NumPy type -> the one a framework accumulates it in (bfloat16, float16 -> float32); every
    other dtype (float32, float64) accumulates in itself and gets faithful library functions. Built on first
    use, not at import: bfloat16's type comes from ml_dtypes, slow to import (backends/dtypes.py)."""
    return {info.numpy: numpy_dtype(accumulation_dtype(name)) for name, info in DTYPE_INFO.items() if info.narrow}


WIDE = frozenset(info.numpy for info in DTYPE_INFO.values() if not info.narrow)


@dataclass(frozen=True)
class Arithmetic:
    dtype: str  # the working dtype: operation outputs and glue arithmetic
    order: str = "blas"
    fma: bool = False
    wide: bool = False
    faithful: bool = False
    seed: int = 0  # of the faithful perturbations
    # An execution mode's rounding (backends/modes.py): the operations named in low_ops (None: every one) read
    # their operands rounded to `low` and round their outputs to it, values kept in the working dtype; matmul
    # operands in float32 rounded to `matmul_operands` ("tf32") first.
    low: str | None = None
    low_ops: frozenset[str] | None = None
    matmul_operands: str | None = None

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r} is not one of {ORDERS}")
        if self.matmul_operands not in (None, "tf32"):
            raise ValueError(f"matmul_operands={self.matmul_operands!r} is not None or 'tf32'")

    def low_for(self, operation: str) -> np.dtype | None:
        """The NumPy dtype `operation` computes in under this mode's rounding, or None (the working dtype)."""
        if self.low is None or (self.low_ops is not None and operation not in self.low_ops):
            return None
        return numpy_dtype(self.low)

    def accumulator(self, dtype: np.dtype) -> np.dtype:
        """A narrow dtype's accumulation dtype, float32 (float64 when wide), else the dtype itself."""
        if dtype in accumulators():
            return np.dtype(np.float64) if self.wide else accumulators()[dtype]
        return np.dtype(dtype)


@dataclass(frozen=True)
class _State:
    arithmetic: Arithmetic
    rng: np.random.Generator  # the faithful perturbations; seeded per `using`, so every call reproduces
    inside_op: bool = False


_ACTIVE: ContextVar[_State | None] = ContextVar("resconf_arithmetic", default=None)


@contextmanager
def using(arithmetic: Arithmetic) -> Iterator[Callable[[Any], Any]]:
    """Run the oracle's code in `arithmetic`; yields `cast`, which takes arrays (in tuples, lists,
    dataclasses with .map) into the working dtype as Ordered views."""
    token = _ACTIVE.set(_State(arithmetic, np.random.default_rng(arithmetic.seed)))
    try:
        yield lambda obj: _cast(obj, numpy_dtype(arithmetic.dtype))
    finally:
        _ACTIVE.reset(token)


def op(fn: Callable) -> Callable:
    """Mark a framework-level operation (see the module docstring); a no-op for the float64 oracle."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        state = _ACTIVE.get()
        if state is None or state.inside_op:
            return fn(*args, **kwargs)
        ar = state.arithmetic
        working, low = numpy_dtype(ar.dtype), ar.low_for(fn.__name__)
        accumulator = ar.accumulator(low if low is not None else working)
        if low is not None:
            args = _cast(args, low)  # a mode's low-precision operation: its operands rounded on the way in
        token = _ACTIVE.set(_State(ar, state.rng, inside_op=True))
        try:
            run_as = EMULATED_AS.get(fn.__name__) if ar.order == "sequential" else None
            result = (functools.partial(run_as, ar) if run_as else fn)(*_cast(args, accumulator), **kwargs)
        finally:
            _ACTIVE.reset(token)
        if low is not None:
            result = _cast(result, low)  # ... and its output rounded to `low`, then held in the working dtype
        return _cast(result, working)  # one rounding per output

    return run


# Operations a framework runs in another (equally exact) way than the oracle's formula, used by the
# sequential order: a linear layer is one GEMM whose accumulator starts at the bias (beta = 1), so its
# rounding errors scale with the bias where the bias outweighs x @ w (torch's addmm does this).
EMULATED_AS: dict[str, Callable] = {"linear": lambda ar, x, w, b: _matmul(ar, x, w, initial=b)}


# Functions a math library evaluates to within an ulp or so; IEEE +, -, *, /, sqrt, max are correctly
# rounded everywhere (exact results stay exact: x - max(x) is 0 at the max, which softmax relies on).
LIBRARY_FUNCTIONS = frozenset({np.exp, np.expm1, np.log, np.log1p, np.tanh, np.sinh, np.cosh, np.power,
                               np.sin, np.cos, np.arctan})


def _is_library_function(ufunc) -> bool:
    return ufunc in LIBRARY_FUNCTIONS or ufunc.__name__.startswith("erf")  # erf: np.vectorize(math.erf)


def _perturb(obj: Any, rng: np.random.Generator) -> Any:
    """A float32/float64 result times (1 + d), d uniform in [-u, u]: within one ulp of the correctly
    rounded value, independently of how the oracle rounded it."""
    if isinstance(obj, np.ndarray) and obj.dtype in WIDE:
        plain = np.asarray(obj)
        u = float(np.finfo(plain.dtype).eps) / 2
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(np.isfinite(plain), plain + plain * rng.uniform(-u, u, plain.shape).astype(plain.dtype),
                            plain)  # Inf and NaN stay what they are
    if isinstance(obj, (tuple, list)):
        return type(obj)(_perturb(o, rng) for o in obj)
    return obj


def _cast(obj: Any, dtype: np.dtype) -> Any:
    if isinstance(obj, np.ndarray) and (obj.dtype.kind == "f" or obj.dtype in accumulators()):
        return np.asarray(obj).astype(dtype).view(Ordered)  # round to nearest even
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype) for o in obj)
    if hasattr(obj, "map") and callable(obj.map):
        return obj.map(lambda a: _cast(a, dtype))
    return obj


class Ordered(np.ndarray):
    """An array whose matmuls and sums follow the active arithmetic's order and accumulation dtype."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        plain = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(np.asarray(o) for o in out)
        state = _ACTIVE.get()
        if state is not None and out is None and ufunc is np.matmul and method == "__call__":
            result = _matmul(state.arithmetic, *plain)
        elif (state is not None and out is None and ufunc is np.add and method == "reduce"
              and kwargs.get("where", True) is True and kwargs.get("initial") is None):
            result = _sum(state.arithmetic, plain[0], kwargs.get("axis", 0), kwargs.get("dtype"),
                          kwargs.get("keepdims", False))
        else:
            result = getattr(ufunc, method)(*plain, **kwargs)
        if state is not None and state.arithmetic.faithful and out is None and _is_library_function(ufunc):
            result = _perturb(result, state.rng)
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(super().__array_function__(func, types, args, kwargs))  # np.where, np.stack keep the order


def _wrap(result: Any) -> Any:
    if isinstance(result, np.ndarray) and not isinstance(result, Ordered):
        return result.view(Ordered)
    if isinstance(result, (tuple, list)):
        return type(result)(_wrap(r) for r in result)
    return result


# --- dot products and sums in an order, in the accumulation dtype, rounded to the result dtype ---

def _matmul(ar: Arithmetic, a: np.ndarray, b: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
    """a @ b in the arithmetic's accumulator and order; `initial` (the sequential order only) is the
    accumulator's starting value, as a GEMM with beta = 1 starts from the bias."""
    out_dtype = np.result_type(a, b)
    acc = ar.accumulator(out_dtype)
    if ar.matmul_operands == "tf32" and out_dtype == np.float32:
        a, b = round_tf32(a), round_tf32(b)
    a, b = a.astype(acc), b.astype(acc)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] == 0:
        s = np.matmul(a, b)
    elif ar.order == "sequential" and ar.fma:
        s = _sequential_fma(a, b)
    elif ar.order == "sequential":
        return _sequential(a, b, None if initial is None else initial.astype(acc)).astype(out_dtype)
    elif ar.order == "blas":
        s = np.matmul(a, b)
    elif ar.order == "reversed":
        s = np.matmul(a[..., ::-1], b[..., ::-1, :])
    else:
        terms = lambda k0, k1: np.matmul(a[..., k0:k1], b[..., k0:k1, :])  # noqa: E731  one block of the sum
        if ar.order == "pairwise":
            s = _tree(terms, 0, a.shape[-1])
        else:  # blocked
            s = functools.reduce(np.add, [terms(k, k + BLOCK) for k in range(0, a.shape[-1], BLOCK)])
    return (s if initial is None else s + initial.astype(acc)).astype(out_dtype)


def round_tf32(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to nearest even at TF32's 10 significand bits (what a tensor core reads)."""
    a = np.asarray(a, dtype=np.float32)
    bits = a.view(np.uint32)
    kept = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return np.where(np.isfinite(a), kept.view(np.float32), a)


def _sequential(a: np.ndarray, b: np.ndarray, initial: np.ndarray | None) -> np.ndarray:
    """((initial + a_0 b_0) + a_1 b_1) + ..., each product and each sum rounded in a's dtype. One vector
    step per term k: cheaper than a running sum (np.cumsum) over all products, whose memory grows as M K N."""
    out_shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-2] + (a.shape[-2],)) + (b.shape[-1],)
    total = None if initial is None else np.broadcast_to(initial, out_shape).astype(a.dtype)
    for k in range(a.shape[-1]):
        term = a[..., k:k + 1] * b[..., k:k + 1, :]  # (..., M, N): the rounded products of term k
        total = np.broadcast_to(term, out_shape) if total is None else total + term
    return np.array(total)


def _sequential_fma(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One term after another, each product formed exactly (in a wider type: float64 for float32, long
    double for float64) and added to the running sum with one rounding."""
    wide = np.float64 if a.dtype == np.float32 else np.longdouble
    total = np.zeros(np.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, b.shape[-1])), dtype=a.dtype)
    for k in range(a.shape[-1]):
        exact = a[..., k:k + 1].astype(wide) * b[..., k:k + 1, :].astype(wide)
        total = (total.astype(wide) + exact).astype(a.dtype)
    return total


def _tree(terms: Callable[[int, int], np.ndarray], k0: int, k1: int) -> np.ndarray:
    if k1 - k0 == 1:
        return terms(k0, k1)
    mid = (k0 + k1) // 2
    return _tree(terms, k0, mid) + _tree(terms, mid, k1)


def _sum(ar: Arithmetic, a: np.ndarray, axis, dtype, keepdims: bool) -> np.ndarray:
    out_dtype = np.dtype(dtype) if dtype is not None else a.dtype
    acc = ar.accumulator(np.result_type(a.dtype, out_dtype))
    axes = tuple(range(a.ndim)) if axis is None else tuple(np.atleast_1d(axis) % max(a.ndim, 1))
    kept = [d for d in range(a.ndim) if d not in axes]
    n = int(np.prod([a.shape[d] for d in axes]))  # explicit: -1 cannot be inferred for an empty array
    flat = np.transpose(a, kept + list(axes)).reshape([a.shape[d] for d in kept] + [n]).astype(acc)  # (..., n)
    s = _ordered_sum(ar, flat).astype(out_dtype)
    if keepdims:
        s = s.reshape([1 if d in axes else a.shape[d] for d in range(a.ndim)])
    return s


def _ordered_sum(ar: Arithmetic, flat: np.ndarray) -> np.ndarray:
    n = flat.shape[-1]
    if n == 0 or ar.order == "blas":
        return np.add.reduce(flat, axis=-1)
    if ar.order == "reversed":
        return np.add.reduce(flat[..., ::-1], axis=-1)
    column = lambda k0, k1: np.add.reduce(flat[..., k0:k1], axis=-1)  # noqa: E731
    if ar.order == "pairwise":
        return _tree(column, 0, n)
    if ar.order == "sequential":
        return np.cumsum(flat, axis=-1)[..., -1]  # a running sum, one term after another
    return functools.reduce(np.add, [column(k, k + BLOCK) for k in range(0, n, BLOCK)])

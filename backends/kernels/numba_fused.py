"""Fused add + RMSNorm / LayerNorm on the CPU, as our own Numba kernels (backends/kernels/numba_kernels.py).

The kernels compile once per argument-type signature and are cached on disk (cache=True); `warm_up`
compiles (or loads) every variant the benchmarks time, so compilation never lands in a timed region.

residual_in_fp32 follows the contract literally: the new residual is kept in float32. For float32 that
changes nothing; for float64 the sum is rounded to float32 (asked for by the flag, so not silent).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numba
import numpy as np

from resconf.backends.kernels import numba_kernels as nk
from resconf.backends import contract
from resconf.backends.base import BENCH_EPS, Backend, Capabilities, FusedGrads
from resconf.backends.config import FUSED_KINDS
from resconf.backends.dtypes import claims, numpy_dtype
from resconf.backends.fused_args import residual_dtype


def _rows(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """(..., C) -> contiguous (N, C) in dt (N counted, not inferred: C may be 0)."""
    return np.ascontiguousarray(a, dt).reshape(math.prod(a.shape[:-1]), a.shape[-1])


@dataclass(frozen=True)
class Workspace:
    """Every array one forward + backward writes: the outputs, plus O(rows) statistics and O(C) partials."""

    out: np.ndarray  # (N, C) dtype
    new_residual: np.ndarray  # (N, C) residual dtype
    mean: np.ndarray  # (N,) float64 (zeros for RMSNorm)
    rstd: np.ndarray  # (N,) float64
    d_sum: np.ndarray  # (N, C) dtype: dx and dresidual, which are the same numbers
    dweight_part: np.ndarray  # (min(N_CHUNKS, N), C) float64
    dbias_part: np.ndarray | None  # (min(N_CHUNKS, N), C) float64

    @classmethod
    def allocate(cls, n_rows: int, n_cols: int, dtype: np.dtype, res_dtype: np.dtype, with_bias: bool,
                 backward: bool) -> "Workspace":
        # chunks depend on the shape only, never on the thread count: results are reproducible anywhere
        rows_bwd, chunks = (n_rows, min(nk.N_CHUNKS, max(n_rows, 1))) if backward else (0, 0)
        return cls(out=np.empty((n_rows, n_cols), dtype), new_residual=np.empty((n_rows, n_cols), res_dtype),
                   mean=np.empty(n_rows), rstd=np.empty(n_rows), d_sum=np.empty((rows_bwd, n_cols), dtype),
                   dweight_part=np.empty((chunks, n_cols)),
                   dbias_part=np.empty((chunks, n_cols)) if with_bias else None)


@contextmanager
def _iterations_per_task(n: int) -> Iterator[None]:
    previous = numba.set_parallel_chunksize(n)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(previous)


def fused_forward(x, residual, weight, bias, eps: float, kind: str, ws: Workspace) -> None:
    """Fill ws.out, ws.new_residual, ws.mean, ws.rstd from (N, C) arrays (no allocation)."""
    with _iterations_per_task(nk.FORWARD_ROWS_PER_TASK):
        nk.add_norm_forward(x, residual, weight, bias, eps, kind == "rmsnorm", ws.out, ws.new_residual, ws.mean,
                            ws.rstd)


def fused_backward(g_out, g_residual, weight, kind: str, ws: Workspace) -> tuple[np.ndarray, np.ndarray | None]:
    """Fill ws.d_sum after `fused_forward`; return (dweight, dbias) in float64, partials summed in chunk order."""
    with _iterations_per_task(nk.BACKWARD_CHUNKS_PER_TASK):
        nk.add_norm_backward(g_out, g_residual, ws.new_residual, weight, ws.mean, ws.rstd, kind == "rmsnorm",
                             ws.d_sum, ws.dweight_part, ws.dbias_part)
    dbias = None if ws.dbias_part is None else ws.dbias_part.sum(axis=0)
    return ws.dweight_part.sum(axis=0), dbias


class NumbaFusedBackend(Backend):
    name = "numba_fused"
    devices = ("cpu",)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(placements=frozenset(), norms=frozenset(), branches=frozenset(),
                            dtypes=claims("float64", "float32"), fused_kinds=frozenset(FUSED_KINDS),
                            blocks=False)

    def versions(self) -> dict[str, str]:
        return {"numba": numba.__version__}

    def _native_args(self, x, residual, weight, bias, dtype):
        contract.check_fused_shapes(x, residual, weight, bias)  # the kernels index rows unchecked
        dt = numpy_dtype(dtype)
        return _rows(x, dt), _rows(residual, dt), np.ascontiguousarray(weight, dt), \
            None if bias is None else np.ascontiguousarray(bias, dt)

    def _run_forward(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32, backward_ws):
        x2, r2, w, b = self._native_args(x, residual, weight, bias, dtype)
        ws = Workspace.allocate(x2.shape[0], x2.shape[1], numpy_dtype(dtype),
                                numpy_dtype(residual_dtype(dtype, residual_in_fp32)), b is not None, backward_ws)
        fused_forward(x2, r2, w, b, eps, kind, ws)
        return w, ws

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        _, ws = self._run_forward(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32, False)
        return (ws.out.astype(np.float64).reshape(x.shape), ws.new_residual.astype(np.float64).reshape(x.shape))

    def _fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                            residual_in_fp32=False) -> FusedGrads:
        contract.check_fused_shapes(x, residual, weight, bias, ("g_out", g_out), ("g_residual", g_residual))
        w, ws = self._run_forward(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32, True)
        dt = numpy_dtype(dtype)
        dweight, dbias = fused_backward(_rows(g_out, dt), _rows(g_residual, dt), w, kind, ws)
        d_sum = ws.d_sum.astype(np.float64).reshape(x.shape)
        to64 = lambda a: a.astype(dt).astype(np.float64)  # noqa: E731  (rounded to dtype, like every output)
        return FusedGrads(dx=d_sum, dresidual=d_sum.copy(), dweight=to64(dweight),
                          dbias=None if dbias is None else to64(dbias))

    # --- benchmark hooks: NumPy arrays in the dtype; the kernels run synchronously ---
    def to_native(self, a: np.ndarray, dtype: str) -> np.ndarray:
        contract.check_dtype(self, dtype)
        return np.ascontiguousarray(a, numpy_dtype(dtype))

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        """f(x, residual, weight, bias, g_out) -> outputs, into arrays allocated once per shape.

        The backward has no cotangent on the residual output (g_residual = 0); dx and dresidual are the
        same numbers, so one array is returned for both. Bytes moved, b = itemsize, N rows of C:
            forward   (4 N C + C) b    read x, residual, weight; write out, new residual (+ C b for bias)
            backward  (3 N C + C) b    read g_out, the saved new residual, weight; write d_sum once
        plus O(N) statistics and O(64 C) float64 weight/bias partials, under 1% and not counted.
        """
        contract.check_bench_fused(self, kind, dtype)
        workspaces: dict[tuple[int, int], Workspace] = {}

        def run(x, residual, weight, bias, g_out):
            ws = workspaces.get(x.shape)
            if ws is None:
                ws = workspaces[x.shape] = Workspace.allocate(*x.shape, x.dtype, x.dtype, with_bias, backward)
            fused_forward(x, residual, weight, bias if with_bias else None, BENCH_EPS, kind, ws)
            if not backward:
                return ws.out, ws.new_residual
            dweight, dbias = fused_backward(g_out, None, weight, kind, ws)
            return ws.out, ws.new_residual, ws.d_sum, ws.d_sum, dweight, dbias

        warm_up(run, dtype)
        return run


def warm_up(fn, dtype: str) -> None:
    """Compile (or load from the on-disk cache) the kernel variants `fn` uses, on a tiny input."""
    rng = np.random.default_rng(0)
    x, r, g = (rng.standard_normal((2, 8)).astype(numpy_dtype(dtype)) for _ in range(3))
    w, b = (rng.standard_normal(8).astype(numpy_dtype(dtype)) for _ in range(2))
    fn(x, r, w, b, g)

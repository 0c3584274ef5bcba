"""Our fused add+norm kernels (numba on the CPU, Triton under its interpreter) against the float64 oracle.

Checked for both: forward and backward (dx, dresidual, dweight, dbias) within the case's error budget
(conformance/budgets.py); the new residual bitwise equal to the unfused add in the residual dtype;
two calls bitwise equal; odd hidden sizes; rows longer than one block (Triton's loop path).

Triton runs interpreted on the CPU: TRITON_INTERPRET=1 is set, and the kernels module imported afresh,
only inside the `triton_cpu` fixture, then both are put back, so no other test sees the variable.
"""
from __future__ import annotations

import os
import sys

import ml_dtypes
import numpy as np
import pytest

from resconf.backends.dtypes import numpy_dtype, round_to
from resconf.backends.oracle.controls import Baseline
from resconf.backends.oracle.numpy_ref import NumpyReference
from resconf.conformance import budgets

EPS = 1e-5
REF, BASE = NumpyReference(), Baseline()


def make_inputs(rows: int | tuple[int, ...], cols: int, dtype: str, kind: str, seed: int):
    """x, residual, weight, bias (None for rmsnorm), g_out, g_residual: random, rounded to dtype.
    rows is the number of rows, or the leading shape (B, T)."""
    rng = np.random.default_rng(seed)
    lead = rows if isinstance(rows, tuple) else (rows,)
    x, r, g, gr = (round_to(rng.standard_normal(lead + (cols,)), dtype) for _ in range(4))
    w = round_to(1.0 + 0.5 * rng.standard_normal(cols), dtype)
    b = round_to(rng.standard_normal(cols), dtype) if kind == "layernorm" else None
    return x, r, w, b, g, gr


def rerun_line() -> str:
    node = os.environ.get("PYTEST_CURRENT_TEST", "tests/test_kernels.py").rsplit(" ", 1)[0]
    return f"rerun: pytest '{node}'"


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), np.finfo(float).tiny))


def assert_close(what: str, got: np.ndarray, want: np.ndarray, base: np.ndarray, kind: str, dtype: str,
                 where: str) -> None:
    """Within the budget of a bare norm output over the hidden size (conformance/budgets.py)."""
    err, b = rel_error(got, want), budgets.budget(kind, dtype, rel_error(base, want), reduction=got.shape[-1])
    assert err <= b.allowed, f"{what}: ||got - ref|| / ||ref|| = {err:.3g} > {b.allowed:.3g} = {b} for {where}"


def assert_matches_reference(backend, rows, cols, dtype, kind, residual_in_fp32, seed=0):
    """Forward and VJP of `backend` against the oracle; the new residual bitwise the unfused add."""
    x, r, w, b, g, gr = make_inputs(rows, cols, dtype, kind, seed)
    where = (f"{backend.name} kind={kind} dtype={dtype} shape={x.shape} "
             f"residual_in_fp32={residual_in_fp32} seed={seed}; {rerun_line()}")
    out, new_res = backend.fused_add_norm(x, r, w, b, EPS, kind, dtype, residual_in_fp32)
    want_out, want_res = REF.fused_add_norm(x, r, w, b, EPS, kind, dtype, residual_in_fp32)
    base_out, _ = BASE.fused_add_norm(x, r, w, b, EPS, kind, dtype, residual_in_fp32)
    res_dtype = numpy_dtype("float32" if residual_in_fp32 else dtype)
    wide = np.promote_types(numpy_dtype(dtype), res_dtype)  # the add happens in the wider of the two
    native_add = (x.astype(wide) + r.astype(wide)).astype(res_dtype)
    assert np.array_equal(new_res, native_add.astype(np.float64)), f"new residual != unfused add for {where}"
    assert np.array_equal(new_res, want_res), f"new residual != oracle's for {where}"
    assert_close("out", out, want_out, base_out, "forward", dtype, where)

    grads, want, base = (be.fused_add_norm_vjp(x, r, w, b, EPS, kind, dtype, g, gr, residual_in_fp32)
                         for be in (backend, REF, BASE))
    for name in ("dx", "dresidual", "dweight") + (("dbias",) if b is not None else ()):
        assert_close(name, getattr(grads, name), getattr(want, name), getattr(base, name), "gradient", dtype, where)
    assert (grads.dbias is None) == (b is None), f"dbias presence wrong for {where}"


def assert_deterministic(backend, rows, cols, dtype, kind):
    x, r, w, b, g, gr = make_inputs(rows, cols, dtype, kind, seed=3)
    runs = [(backend.fused_add_norm(x, r, w, b, EPS, kind, dtype),
             backend.fused_add_norm_vjp(x, r, w, b, EPS, kind, dtype, g, gr)) for _ in range(2)]
    (fwd1, g1), (fwd2, g2) = runs
    for a, b2 in zip(fwd1 + (g1.dx, g1.dresidual, g1.dweight), fwd2 + (g2.dx, g2.dresidual, g2.dweight)):
        assert np.array_equal(a, b2), f"{backend.name} {kind} {dtype}: two identical calls differ; {rerun_line()}"


# --- numba (CPU) ---

@pytest.fixture(scope="module")
def numba_backend():
    pytest.importorskip("numba")
    from resconf.backends.kernels.numba_fused import NumbaFusedBackend
    return NumbaFusedBackend()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("rows,cols", [((2, 3), 33), (70, 100), (3, 1)])  # odd widths; more rows than chunks
def test_numba_matches_reference(numba_backend, dtype, kind, rows, cols):
    assert_matches_reference(numba_backend, rows, cols, dtype, kind, residual_in_fp32=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_residual_in_fp32_keeps_a_float32_residual(numba_backend, dtype):
    assert_matches_reference(numba_backend, 5, 33, dtype, "layernorm", residual_in_fp32=True)


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_numba_is_deterministic(numba_backend, kind):
    assert_deterministic(numba_backend, 70, 33, "float32", kind)


def test_numba_does_not_depend_on_the_thread_count(numba_backend):
    import numba
    x, r, w, b, g, gr = make_inputs(70, 40, "float32", "layernorm", seed=4)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            results.append(numba_backend.fused_add_norm_vjp(x, r, w, b, EPS, "layernorm", "float32", g, gr))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(results[0].dweight, results[1].dweight)
    assert np.array_equal(results[0].dx, results[1].dx)


@pytest.mark.parametrize("kind,with_bias", [("rmsnorm", False), ("layernorm", True)])
def test_numba_bench_callable_agrees_with_the_adapter(numba_backend, kind, with_bias):
    x, r, w, b, g, _ = make_inputs(9, 40, "float32", "layernorm", seed=5)
    native = [numba_backend.to_native(a, "float32") for a in (x, r, w, b, g)]
    out, new_res, dx, dres, dw, db = numba_backend.bench_fused_add_norm(kind, "float32", with_bias, True)(*native)
    bias = b if with_bias else None
    want = numba_backend.fused_add_norm_vjp(x, r, w, bias, 1e-5, kind, "float32", g, np.zeros_like(g))
    assert np.array_equal(out, numba_backend.fused_add_norm(x, r, w, bias, 1e-5, kind, "float32")[0])
    assert dx is dres and np.array_equal(dx, want.dx)
    assert np.array_equal(dw.astype(np.float32), want.dweight) and (db is None) == (not with_bias)


def test_numba_rejects_a_broadcast_residual(numba_backend):
    x, r, w, b, _, _ = make_inputs(4, 8, "float32", "layernorm", seed=6)
    with pytest.raises(ValueError, match=r"residual has shape \(1, 8\) but x has shape \(4, 8\)"):
        numba_backend.fused_add_norm(x, r[:1], w, b, EPS, "layernorm", "float32")


def assert_empty_batch_works(backend, dtype):
    x, r, w, b, g, gr = make_inputs((0, 5), 8, dtype, "layernorm", seed=7)
    out, new_res = backend.fused_add_norm(x, r, w, b, EPS, "layernorm", dtype)
    grads = backend.fused_add_norm_vjp(x, r, w, b, EPS, "layernorm", dtype, g, gr)
    assert out.shape == new_res.shape == grads.dx.shape == (0, 5, 8)
    assert np.array_equal(grads.dweight, np.zeros(8)) and np.array_equal(grads.dbias, np.zeros(8))


def test_numba_empty_batch(numba_backend):
    assert_empty_batch_works(numba_backend, "float32")


# --- Triton, interpreted on the CPU ---

@pytest.fixture(scope="module")
def triton_cpu():
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    from resconf.backends.kernels.triton_fused import KERNELS_MODULE, TritonFusedBackend
    saved_env, saved_module = os.environ.get("TRITON_INTERPRET"), sys.modules.pop(KERNELS_MODULE, None)
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield TritonFusedBackend("cpu")
    finally:
        sys.modules.pop(KERNELS_MODULE, None)  # the interpreted kernels go; a later import compiles again
        if saved_module is not None:
            sys.modules[KERNELS_MODULE] = saved_module
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("cols,max_block,residual_in_fp32", [
    (33, None, False),  # one block of 64, odd width masked
    (100, 32, True),  # four blocks of 32: the loop path, last block partial
])
def test_triton_matches_reference(triton_cpu, dtype, kind, cols, max_block, residual_in_fp32):
    triton_cpu.max_block = max_block or triton_cpu.kernels.MAX_BLOCK
    try:
        assert_matches_reference(triton_cpu, 6, cols, dtype, kind, residual_in_fp32)
    finally:
        triton_cpu.max_block = triton_cpu.kernels.MAX_BLOCK


@pytest.mark.parametrize("max_block", [None, 16])  # one block; three blocks
def test_triton_is_deterministic(triton_cpu, max_block):
    triton_cpu.max_block = max_block or triton_cpu.kernels.MAX_BLOCK
    try:
        assert_deterministic(triton_cpu, 5, 33, "bfloat16", "layernorm")
    finally:
        triton_cpu.max_block = triton_cpu.kernels.MAX_BLOCK


def test_triton_rounds_bfloat16_to_nearest_even(triton_cpu):
    """Ties, carries and NaN through the hand-written rounding (the interpreter's own cast truncates)."""
    big = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)  # (2 - 2^-7) 2^127, odd significand
    x = np.array([[1.0, 1.0 + 2**-7, 1.0, -1.0, np.nan, big]])
    r = np.array([[2**-8, 2**-8, 2**-8 + 2**-10, -(2**-8), 1.0, 2.0**119]])
    # ties to even (down, up), above a tie (truncation would give 1), negative tie, NaN, tie at the top -> inf
    want = np.array([[1.0, 1.0 + 2**-6, 1.0 + 2**-7, -1.0, np.nan, np.inf]])
    _, new_res = triton_cpu.fused_add_norm(x, r, np.ones(6), None, EPS, "rmsnorm", "bfloat16")
    assert np.array_equal(new_res, want, equal_nan=True), f"got {new_res}, want {want}"


def test_triton_empty_batch(triton_cpu):
    assert_empty_batch_works(triton_cpu, "float16")


def test_triton_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    from resconf.backends.kernels.triton_fused import TritonFusedBackend
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        TritonFusedBackend("cpu")

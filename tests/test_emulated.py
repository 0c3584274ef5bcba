"""The emulated arithmetic (backends/oracle/emulated.py) does what it says: each order sums as named, FMA
contracts, @op rounds once, the faithful perturbation stays within an ulp, and none of it is wrong maths
(every order stays within Higham's bound of the exact sum)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from resconf.backends.oracle import numpy_ops as ops
from resconf.backends.dtypes import NARROW_DTYPES, accumulation_dtype, numpy_dtype
from resconf.backends.oracle.emulated import EMULATED_AS, ORDERS, Arithmetic, Ordered, using

F32 = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)


def _pair(seed: int, m: int = 3, k: int = 37, n: int = 5, dtype=F32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fma", [False, True])
def test_every_order_is_a_correct_dot_product(order, fma):
    """|fl(a @ b) - a @ b| <= gamma_K |a| |b| elementwise, gamma_K = K u / (1 - K u) (Higham, eq. 3.5)."""
    a, b = _pair(0)
    with using(Arithmetic("float32", order, fma)) as cast:
        got = np.asarray(cast(a) @ cast(b)).astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    K, u = a.shape[1], float(np.finfo(F32).eps) / 2
    bound = K * u / (1 - K * u) * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert np.all(np.abs(got - exact) <= bound), f"{order} fma={fma}: outside the dot-product error bound"


def test_sequential_sums_term_after_term_in_the_working_dtype():
    a, b = _pair(1)
    want = np.zeros((a.shape[0], b.shape[1]), dtype=F32)
    for k in range(a.shape[1]):
        want = want + np.outer(a[:, k], b[k])  # float32: each product rounded, then each sum
    with using(Arithmetic("float32", "sequential")) as cast:
        assert np.array_equal(cast(a) @ cast(b), want)


def test_a_sequential_linear_layer_accumulates_into_its_bias():
    """As a GEMM with beta = 1 does: the running sum starts at the bias (EMULATED_AS)."""
    x, w = _pair(10, m=6, k=40, n=3)
    b = np.random.default_rng(11).standard_normal(3).astype(F32) * 100
    want = np.broadcast_to(b, (6, 3)).copy()
    for k in range(x.shape[1]):
        want = want + np.outer(x[:, k], w[k])
    with using(Arithmetic("float32", "sequential")) as cast:
        assert np.array_equal(ops.linear(cast(x), cast(w), cast(b)), want)
    assert set(EMULATED_AS) <= set(dir(ops)), "EMULATED_AS names an operation numpy_ops does not have"


def test_fma_rounds_each_step_once():
    a, b = _pair(2)
    want = np.zeros((a.shape[0], b.shape[1]), dtype=F32)
    for k in range(a.shape[1]):
        want = (want.astype(np.float64) + np.outer(a[:, k].astype(np.float64), b[k].astype(np.float64))).astype(F32)
    with using(Arithmetic("float32", "sequential", fma=True)) as cast:
        got = cast(a) @ cast(b)
    with using(Arithmetic("float32", "sequential")) as cast:
        plain = cast(a) @ cast(b)
    assert np.array_equal(got, want)
    assert not np.array_equal(got, plain), "FMA should change some roundings of a 37-term dot product"


def test_pairwise_is_a_balanced_tree():
    a, b = _pair(3, k=4)
    p = [np.outer(a[:, k], b[k]) for k in range(4)]
    with using(Arithmetic("float32", "pairwise")) as cast:
        assert np.array_equal(cast(a) @ cast(b), (p[0] + p[1]) + (p[2] + p[3]))


@pytest.mark.parametrize("order", ORDERS)
def test_sums_over_axes_keep_numpy_shapes(order):
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(F32)
    with using(Arithmetic("float32", order)) as cast:
        e = cast(x)
        for axis, keepdims in ((-1, True), (0, False), ((0, 2), True), (None, False)):
            got = np.sum(e, axis=axis, keepdims=keepdims)
            want = np.sum(x.astype(np.float64), axis=axis, keepdims=keepdims)
            assert np.shape(got) == np.shape(want)
            assert np.allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-5, atol=1e-5)
        assert np.asarray(e.mean(axis=-1)).dtype == F32


@pytest.mark.parametrize("order", ORDERS)
def test_sums_of_empty_arrays_keep_numpy_shapes(order):
    """An empty batch (BI-4) sums to numpy's shapes: zeros where the summed axes are empty, nothing
    where a kept axis is."""
    for shape, axis in (((0, 5, 3), -1), ((2, 0, 3), -1), ((2, 0, 3), 1)):
        x = np.ones(shape, dtype=F32)
        with using(Arithmetic("float32", order)) as cast:
            got = np.sum(cast(x), axis=axis, keepdims=True)
        assert np.array_equal(np.asarray(got), np.sum(x, axis=axis, keepdims=True))


@pytest.mark.parametrize("dtype", NARROW_DTYPES)
def test_an_op_runs_in_its_accumulation_dtype_and_rounds_once(dtype):
    """bfloat16 and float16 (every narrow record): computed in float32, the record's accumulator."""
    narrow, acc = numpy_dtype(dtype), numpy_dtype(accumulation_dtype(dtype))
    x, w = _pair(5, m=4, k=16, n=8)
    b = np.random.default_rng(6).standard_normal(8).astype(F32)
    x, w, b = (t.astype(narrow) for t in (x, w, b))
    want = (x.astype(acc) @ w.astype(acc) + b.astype(acc)).astype(narrow)
    with using(Arithmetic(dtype, "blas")) as cast:
        got = ops.linear(cast(x), cast(w), cast(b))
    assert isinstance(got, Ordered) and got.dtype == narrow
    assert np.array_equal(np.asarray(got), want)


def test_glue_arithmetic_rounds_in_the_working_dtype():
    x = np.random.default_rng(7).standard_normal(64).astype(BF16)
    with using(Arithmetic("bfloat16")) as cast:
        y = cast(x) + cast(x) * 3.0
    assert np.asarray(y).dtype == BF16
    assert np.array_equal(np.asarray(y), x + x * BF16.type(3.0))


def test_faithful_results_are_within_an_ulp_and_reproduce():
    x = np.random.default_rng(8).standard_normal((50, 50))
    runs = []
    for _ in range(2):
        with using(Arithmetic("float64", faithful=True)) as cast:
            runs.append(np.asarray(np.tanh(cast(x))))
    exact = np.tanh(x)
    assert np.array_equal(runs[0], runs[1]), "seeded per `using`: the same call perturbs the same way"
    assert np.all(np.abs(runs[0] - exact) <= np.spacing(np.abs(exact))), "more than one ulp off"
    assert not np.array_equal(runs[0], exact), "faithful should move some results off the correct rounding"


def test_faithful_keeps_inf_and_nan():
    x = np.array([np.inf, -np.inf, np.nan, 1.0])
    with using(Arithmetic("float64", faithful=True)) as cast:
        y = np.asarray(cast(x) * 2.0)
    assert np.isposinf(y[0]) and np.isneginf(y[1]) and np.isnan(y[2])


def test_without_an_arithmetic_op_changes_nothing():
    x, w = _pair(9, dtype=np.float64)
    got = ops.linear(x, w, np.zeros(w.shape[1]))
    assert type(got) is np.ndarray and np.array_equal(got, x @ w)


def test_unknown_order_is_named():
    with pytest.raises(ValueError, match="order='zigzag' is not one of"):
        Arithmetic("float32", "zigzag")

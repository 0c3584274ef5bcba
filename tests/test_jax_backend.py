"""The JAX backend against the float64 oracle (NumpyReference), in low precision, and its compile cache.

Every placement x norm x branch compiles two programs (forward, VJP), so shapes stay tiny: the cost here is
XLA compile time, not arithmetic.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("jax")

from resconf.backends.config import BRANCHES, NORMS, PLACEMENTS, BlockConfig  # noqa: E402
from resconf.backends.dtypes import round_to  # noqa: E402
from resconf.backends.jax_backend import TRACES, JaxBackend  # noqa: E402
from resconf.backends.numpy_ref import NumpyReference  # noqa: E402
from resconf.backends.params import draw_params  # noqa: E402

RTOL_FLOAT64 = 1e-10  # the same function in float64: only summation order differs
SHAPE = (2, 3, 8)  # (B, T, C): d_model 8, two heads of 4
LOW_DTYPES = ("float32", "bfloat16", "float16")
CACHED_CFG = BlockConfig(placement="deepnorm", norm="rmsnorm", depth=3, d_model=SHAPE[-1], n_heads=2)  # float32


@pytest.fixture(scope="module")
def jx() -> JaxBackend:
    return JaxBackend("cpu")


@pytest.fixture(scope="module")
def ref() -> NumpyReference:
    return NumpyReference()


def _inputs(seed: int, shape=SHAPE, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return round_to(rng.standard_normal(shape), dtype), round_to(rng.standard_normal(shape), dtype)


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Elementwise rtol, with an absolute floor at rtol * max|want| for entries near zero."""
    atol = RTOL_FLOAT64 * float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=RTOL_FLOAT64, atol=atol, err_msg=what)


def _cfg(placement: str, norm: str, branch: str, depth: int = 2) -> BlockConfig:
    # exact GELU on rmsnorm, tanh on layernorm: both GELUs covered without doubling the compiles
    return BlockConfig(placement=placement, norm=norm, branch=branch, depth=depth, d_model=SHAPE[-1], n_heads=2,
                       gelu="exact" if norm == "rmsnorm" else "tanh")


# Every placement, norm and branch at least once (the conformance suite draws the full product).
COVERING = [(p, NORMS[i % 2], BRANCHES[i % 3]) for i, p in enumerate(PLACEMENTS)] + [("pre", "rmsnorm", "attention")]


@pytest.mark.parametrize("placement,norm,branch", COVERING)
def test_stack_matches_reference_float64(jx, ref, placement, norm, branch):
    cfg = _cfg(placement, norm, branch)
    params = draw_params(cfg, seed=3, perturb=True)
    x, g = _inputs(seed=4)
    got, want = jx.stack_forward(cfg, params, x, "float64"), ref.stack_forward(cfg, params, x, "float64")
    _assert_close(got.states, want.states, f"states, {cfg.describe()}")
    _assert_close(got.branches, want.branches, f"branches, {cfg.describe()}")
    got_g, want_g = jx.stack_vjp(cfg, params, x, g, "float64"), ref.stack_vjp(cfg, params, x, g, "float64")
    _assert_close(got_g.dx, want_g.dx, f"dx, {cfg.describe()}")
    for layer, (gp, wp) in enumerate(zip(got_g.dparams, want_g.dparams, strict=True)):
        assert [n for n, _ in gp.items()] == [n for n, _ in wp.items()]
        for (name, a), (_, b) in zip(gp.items(), wp.items()):
            _assert_close(a, b, f"d{name} of block {layer}, {cfg.describe()}")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])  # float32 stacks: the two tests below
def test_stack_low_precision_is_finite_and_in_dtype(jx, dtype):
    cfg = _cfg("pre", "layernorm", "attention")
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed=5, perturb=True))
    x, g = _inputs(seed=6, dtype=dtype)
    trace, grads = jx.stack_forward(cfg, params, x, dtype), jx.stack_vjp(cfg, params, x, g, dtype)
    assert trace.states.shape == (cfg.depth + 1, *SHAPE) and trace.branches.shape == (cfg.depth, *SHAPE)
    assert grads.dx.shape == SHAPE and len(grads.dparams) == cfg.depth
    for name, a in [("states", trace.states), ("dx", grads.dx), *grads.dparams[0].items()]:
        assert np.all(np.isfinite(a)), name
        assert np.array_equal(round_to(a, dtype), a), f"{name} is not representable in {dtype}"


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_add_norm_matches_reference_float64(jx, ref, kind, with_bias):
    x, r = _inputs(seed=7, shape=(3, 16))
    g_out, g_res = _inputs(seed=8, shape=(3, 16))
    rng = np.random.default_rng(9)
    w, b = rng.standard_normal(16), (rng.standard_normal(16) if with_bias else None)
    args = (x, r, w, b, 1e-5, kind, "float64")
    for got, want, name in zip(jx.fused_add_norm(*args), ref.fused_add_norm(*args), ("out", "residual")):
        _assert_close(got, want, name)
    got_g, want_g = jx.fused_add_norm_vjp(*args, g_out, g_res), ref.fused_add_norm_vjp(*args, g_out, g_res)
    for name in ("dx", "dresidual", "dweight") + (("dbias",) if with_bias else ()):
        _assert_close(getattr(got_g, name), getattr(want_g, name), name)
    assert (got_g.dbias is None) == (not with_bias)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_fused_residual_is_the_unfused_add(jx, dtype, residual_in_fp32):
    """The returned residual is bitwise the add rounded to the residual dtype; the output is in dtype."""
    x, r = _inputs(seed=10, shape=(4, 16), dtype=dtype)
    w = round_to(np.random.default_rng(11).standard_normal(16), dtype)
    out, new_residual = jx.fused_add_norm(x, r, w, None, 1e-5, "rmsnorm", dtype, residual_in_fp32)
    assert np.array_equal(new_residual, round_to(x + r, "float32" if residual_in_fp32 else dtype))
    assert np.all(np.isfinite(out)) and np.array_equal(round_to(out, dtype), out)
    grads = jx.fused_add_norm_vjp(x, r, w, None, 1e-5, "rmsnorm", dtype, x, r, residual_in_fp32)
    assert grads.dx.shape == x.shape and grads.dweight.shape == (16,) and np.all(np.isfinite(grads.dx))


def test_same_static_config_and_shapes_do_not_recompile(jx):
    """New parameter values, inputs and eps at the same (config, dtype, shapes, depth) reuse the compile."""
    cfg = CACHED_CFG
    x, g = _inputs(seed=12)
    jx.stack_forward(cfg, draw_params(cfg, seed=1), x, "float32")
    jx.stack_vjp(cfg, draw_params(cfg, seed=1), x, g, "float32")
    jx.fused_add_norm(x, g, np.ones(SHAPE[-1]), None, 1e-5, "rmsnorm", "float32")
    before = dict(TRACES)
    again = dataclasses.replace(cfg, eps=1e-3, init="gpt2")  # eps traced, init only changes params
    jx.stack_forward(again, draw_params(again, seed=2), g, "float32")
    jx.stack_vjp(again, draw_params(again, seed=2), g, x, "float32")
    jx.fused_add_norm(g, x, np.full(SHAPE[-1], 2.0), None, 1e-3, "rmsnorm", "float32")
    assert dict(TRACES) == before
    deeper = dataclasses.replace(cfg, depth=4)  # a new depth is a new shape: one more trace
    jx.stack_forward(deeper, draw_params(deeper, seed=1), x, "float32")
    assert TRACES["stack_forward"] == before["stack_forward"] + 1


def test_empty_batch_and_sequence(jx):
    cfg = _cfg("pre", "layernorm", "attention")
    params = draw_params(cfg, seed=0)
    for shape in [(0, 3, 8), (2, 0, 8)]:
        trace = jx.stack_forward(cfg, params, np.zeros(shape), "float64")
        assert trace.states.shape == (cfg.depth + 1, *shape) and trace.branches.shape == (cfg.depth, *shape)
    grads = jx.stack_vjp(cfg, params, np.zeros((2, 0, 8)), np.zeros((2, 0, 8)), "float64")
    assert grads.dx.shape == (2, 0, 8) and grads.dparams[0].w_in.shape == (8, 24)


def test_bench_hooks_agree_with_the_api(jx):
    cfg = CACHED_CFG  # the stack program compiled by the test above
    params = draw_params(cfg, seed=13, perturb=True)
    x, g = _inputs(seed=14, dtype="float32")
    result = jx.bench_stack(cfg, params, "float32")(jx.to_native(x, "float32"), jx.to_native(g, "float32"))
    jx.synchronize(result)
    np.testing.assert_array_equal(np.asarray(result[0], np.float64), jx.stack_vjp(cfg, params, x, g, "float32").dx)
    w = np.ones(SHAPE[-1])
    fused = jx.bench_fused_add_norm("layernorm", "float32", with_bias=True, backward=False)
    out, new_residual = fused(*(jx.to_native(a, "float32") for a in (x, g, w, w, x)))
    want_out, want_residual = jx.fused_add_norm(x, g, w, w, 1e-5, "layernorm", "float32")
    np.testing.assert_array_equal(np.asarray(new_residual, np.float64), want_residual)
    np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=1e-6, atol=1e-6)
    dx, dres, dw, db = jx.bench_fused_add_norm("layernorm", "float32", True, backward=True)(
        *(jx.to_native(a, "float32") for a in (x, g, w, w, x)))
    assert dx.shape == x.shape and db.shape == w.shape


def test_bad_arguments_name_the_shapes(jx):
    cfg = _cfg("pre", "rmsnorm", "linear")
    params = draw_params(cfg, seed=0)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        jx.stack_forward(cfg, params, np.zeros((2, 3, 4)), "float32")
    with pytest.raises(ValueError, match=r"\(1, 8\).*\(4, 8\)"):
        jx.fused_add_norm(np.zeros((4, 8)), np.zeros((1, 8)), np.ones(8), None, 1e-5, "rmsnorm", "float32")
    with pytest.raises(ValueError, match="int8"):
        jx.stack_forward(cfg, params, np.zeros(SHAPE), "int8")
    wrong = params[:1] + (params[1].map(lambda t: t[..., :4] if t.ndim == 2 else t),)
    with pytest.raises(ValueError, match="block 1"):
        jx.stack_forward(cfg, wrong, np.zeros(SHAPE), "float32")

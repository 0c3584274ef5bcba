"""The PyTorch adapters against the float64 oracle (NumpyReference), plus their own contracts.

float64 must agree with the oracle to FLOAT64_RTOL (normwise): only the order of operations differs. Lower
dtypes are only checked to run, to return finite values of the right shape, and to return values that
are representable in the dtype (proof that they were computed there); how close they come is the
conformance suite's business, with its error budgets. torch.compile's first call takes ~25 s here, so
the compiled numerics run only with RESCONF_SLOW_TESTS=1; CUDA tests run only where CUDA is present.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resconf.backends.config import BlockConfig  # noqa: E402
from resconf.backends.dtypes import round_to  # noqa: E402
from resconf.backends.numpy_ref import NumpyReference  # noqa: E402
from resconf.backends.params import draw_params  # noqa: E402
from resconf.backends.torch_backend import TorchBackend, TorchCompileBackend  # noqa: E402

FLOAT64_RTOL = 1e-10
B, T = 2, 5
EPS = 1e-5
# Every placement, norm, branch and GELU appears at least once; depth 2 so gradients cross a block border.
CONFIGS = [
    BlockConfig(placement="pre", norm="layernorm", branch="mlp", gelu="tanh", depth=2, d_model=8),
    BlockConfig(placement="post", norm="rmsnorm", branch="attention", depth=2, d_model=8, n_heads=2),
    BlockConfig(placement="rezero", norm="layernorm", branch="linear", depth=2, d_model=8),
    BlockConfig(placement="deepnorm", norm="rmsnorm", branch="mlp", gelu="exact", depth=2, d_model=8),
    BlockConfig(placement="plain", norm="layernorm", branch="attention", depth=2, d_model=8, n_heads=4),
    BlockConfig(placement="pre", norm="rmsnorm", branch="attention", depth=2, d_model=8, n_heads=2),
]
LOW_DTYPES = ["float32", "bfloat16", "float16"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
slow = pytest.mark.skipif(not os.environ.get("RESCONF_SLOW_TESTS"), reason="torch.compile takes ~25 s; "
                          "set RESCONF_SLOW_TESTS=1")


def rand(*shape, seed, dtype="float64"):
    return round_to(np.random.default_rng(seed).standard_normal(shape), dtype)


def rel_err(got, want):
    scale = np.linalg.norm(want)
    return np.linalg.norm(got - want) / (scale if scale > 0 else 1.0)


def assert_close(got, want, what, rtol=FLOAT64_RTOL):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = rel_err(got, want)
    assert err <= rtol, f"{what}: normwise relative error {err:.2e} > {rtol:g}"


def stack_case(cfg, dtype="float64", seed=0):
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed, perturb=True))
    return params, rand(B, T, cfg.d_model, seed=seed + 1, dtype=dtype), rand(B, T, cfg.d_model, seed=seed + 2,
                                                                             dtype=dtype)


def fused_case(with_bias, dtype, residual_in_fp32=False, shape=(6, 16)):
    residual_dtype = "float32" if residual_in_fp32 else dtype
    return dict(x=rand(*shape, seed=1, dtype=dtype), residual=rand(*shape, seed=2, dtype=residual_dtype),
                weight=round_to(1 + 0.1 * rand(shape[-1], seed=3), dtype),
                bias=round_to(0.1 * rand(shape[-1], seed=4), dtype) if with_bias else None)


@pytest.fixture(scope="module")
def tb():
    return TorchBackend("cpu")


@pytest.fixture(scope="module")
def ref():
    return NumpyReference()


# --- float64 against the oracle ---

@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.placement}-{c.norm}-{c.branch}")
def test_stack_matches_oracle_in_float64(tb, ref, cfg):
    params, x, g = stack_case(cfg)
    got, want = tb.stack_forward(cfg, params, x, "float64"), ref.stack_forward(cfg, params, x, "float64")
    assert_close(got.states, want.states, "states")
    assert_close(got.branches, want.branches, "branches")
    got_g, want_g = tb.stack_vjp(cfg, params, x, g, "float64"), ref.stack_vjp(cfg, params, x, g, "float64")
    assert_close(got_g.dx, want_g.dx, "dx")
    for layer, (gp, wp) in enumerate(zip(got_g.dparams, want_g.dparams)):
        assert [n for n, _ in gp.items()] == [n for n, _ in wp.items()]
        for (name, a), (_, b) in zip(gp.items(), wp.items()):
            assert_close(a, b, f"block {layer} d{name}")


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_matches_oracle_in_float64(tb, ref, kind, with_bias):
    case = fused_case(with_bias, "float64")
    g_out, g_res = rand(6, 16, seed=5), rand(6, 16, seed=6)
    (out, res), (want_out, want_res) = (b.fused_add_norm(**case, eps=EPS, kind=kind, dtype="float64") for b in (tb, ref))
    assert np.array_equal(res, want_res)
    assert_close(out, want_out, "out")
    got, want = (b.fused_add_norm_vjp(**case, eps=EPS, kind=kind, dtype="float64", g_out=g_out, g_residual=g_res)
                 for b in (tb, ref))
    for name in ("dx", "dresidual", "dweight", "dbias"):
        if getattr(want, name) is None:
            assert getattr(got, name) is None
        else:
            assert_close(getattr(got, name), getattr(want, name), name)


@pytest.mark.parametrize("dtype, residual_in_fp32", [("float32", False), ("bfloat16", False), ("bfloat16", True),
                                                     ("float16", False), ("float16", True)])
def test_fused_residual_is_bitwise_the_native_add(tb, ref, dtype, residual_in_fp32):
    case = fused_case(True, dtype, residual_in_fp32)
    _, res = tb.fused_add_norm(**case, eps=EPS, kind="rmsnorm", dtype=dtype, residual_in_fp32=residual_in_fp32)
    _, want = ref.fused_add_norm(**case, eps=EPS, kind="rmsnorm", dtype=dtype, residual_in_fp32=residual_in_fp32)
    assert np.array_equal(res, want)


# --- lower dtypes: computed natively, finite, right shape ---

def assert_native(a, shape, dtype, what):
    assert a.shape == shape and a.dtype == np.float64, f"{what}: {a.shape} {a.dtype}, expected {shape} float64"
    assert np.all(np.isfinite(a)), f"{what}: non-finite values in {dtype}"
    assert np.array_equal(a, round_to(a, dtype)), f"{what}: values not representable in {dtype}"


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=lambda c: f"{c.placement}-{c.branch}")
def test_stack_runs_natively_in_low_precision(tb, cfg, dtype):
    params, x, g = stack_case(cfg, dtype)
    L, C = cfg.depth, cfg.d_model
    trace = tb.stack_forward(cfg, params, x, dtype)
    assert_native(trace.states, (L + 1, B, T, C), dtype, "states")
    assert_native(trace.branches, (L, B, T, C), dtype, "branches")
    grads = tb.stack_vjp(cfg, params, x, g, dtype)
    assert_native(grads.dx, (B, T, C), dtype, "dx")
    for gp, p in zip(grads.dparams, params):
        for (name, d), (_, t) in zip(gp.items(), p.items()):
            assert_native(d, t.shape, dtype, f"d{name}")


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_fused_runs_natively_in_low_precision(tb, kind, dtype):
    case = fused_case(True, dtype, residual_in_fp32=True)
    out, res = tb.fused_add_norm(**case, eps=EPS, kind=kind, dtype=dtype, residual_in_fp32=True)
    assert_native(out, (6, 16), dtype, "out")
    assert_native(res, (6, 16), "float32", "new residual")
    grads = tb.fused_add_norm_vjp(**case, eps=EPS, kind=kind, dtype=dtype, g_out=rand(6, 16, seed=5, dtype=dtype),
                                  g_residual=rand(6, 16, seed=6, dtype="float32"), residual_in_fp32=True)
    assert_native(grads.dx, (6, 16), dtype, "dx")
    assert_native(grads.dresidual, (6, 16), "float32", "dresidual")
    assert_native(grads.dweight, (16,), dtype, "dweight")


# --- contracts: determinism, layout, bad input, empty input ---

def test_deterministic_and_layout_blind_on_cpu(tb):
    cfg = CONFIGS[1]
    params, x, g = stack_case(cfg, "float32")
    first, second = tb.stack_vjp(cfg, params, x, g, "float32"), tb.stack_vjp(cfg, params, x, g, "float32")
    assert np.array_equal(first.dx, second.dx)
    strided = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)[:, ::-1][:, ::-1]
    assert not strided.flags.c_contiguous
    assert np.array_equal(tb.stack_vjp(cfg, params, strided, g, "float32").dx, first.dx)


def test_bad_shapes_raise_naming_both(tb):
    case = fused_case(True, "float32")
    with pytest.raises(ValueError, match=r"\(1, 16\).*\(6, 16\)"):
        tb.fused_add_norm(**{**case, "residual": case["residual"][:1]}, eps=EPS, kind="rmsnorm", dtype="float32")
    with pytest.raises(ValueError, match=r"weight has shape \(8,\)"):
        tb.fused_add_norm(**{**case, "weight": case["weight"][:8]}, eps=EPS, kind="rmsnorm", dtype="float32")
    cfg = CONFIGS[0]
    params, x, _ = stack_case(cfg)
    narrow = (dataclasses.replace(params[0], w_out=params[0].w_out[:, :4]),) + params[1:]
    with pytest.raises(ValueError, match=r"w_out has shape \(32, 4\), expected \(32, 8\)"):
        tb.stack_forward(cfg, narrow, x, "float64")
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 4\)"):
        tb.stack_forward(cfg, params, x[..., :4], "float64")
    with pytest.raises(ValueError, match="does not claim dtype 'int8'"):
        tb.stack_forward(cfg, params, x, "int8")


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_empty_batch_or_sequence(tb, shape):
    cfg = CONFIGS[1]  # attention: the op most likely to trip on T = 0
    params, _, _ = stack_case(cfg)
    x = np.zeros(shape + (cfg.d_model,))
    assert tb.stack_forward(cfg, params, x, "float32").states.shape == (cfg.depth + 1,) + x.shape
    assert tb.stack_vjp(cfg, params, x, x, "float32").dx.shape == x.shape


# --- benchmark hooks ---

def test_bench_hooks_compute_what_the_api_computes(tb):
    case = fused_case(True, "float32")
    g_out = rand(6, 16, seed=5, dtype="float32")
    native = [tb.to_native(a, "float32") for a in (case["x"], case["residual"], case["weight"], case["bias"], g_out)]
    out, res = tb.bench_fused_add_norm("layernorm", "float32", True, backward=False)(*native)
    want_out, want_res = tb.fused_add_norm(**case, eps=EPS, kind="layernorm", dtype="float32")
    assert np.array_equal(out.double().numpy(), want_out) and np.array_equal(res.double().numpy(), want_res)
    dx, dres, dw, db = tb.bench_fused_add_norm("layernorm", "float32", True, backward=True)(*native)
    want = tb.fused_add_norm_vjp(**case, eps=EPS, kind="layernorm", dtype="float32", g_out=g_out,
                                 g_residual=np.zeros_like(g_out))
    assert np.array_equal(dx.double().numpy(), want.dx) and np.array_equal(db.double().numpy(), want.dbias)

    cfg = CONFIGS[0]
    params, x, g = stack_case(cfg, "float32")
    grads = tb.bench_stack(cfg, params, "float32")(tb.to_native(x, "float32"), tb.to_native(g, "float32"))
    tb.synchronize(grads)
    assert np.array_equal(grads[0].double().numpy(), tb.stack_vjp(cfg, params, x, g, "float32").dx)


# --- torch.compile variant ---

def test_compile_backend_claims_fused_only():
    tc = TorchCompileBackend("cpu")
    assert not tc.capabilities.blocks and tc.capabilities.fused_kinds == {"rmsnorm", "layernorm"}
    cfg = CONFIGS[0]
    params, x, _ = stack_case(cfg)
    with pytest.raises(NotImplementedError, match="fused add\\+norm only"):
        tc.stack_forward(cfg, params, x, "float32")


@slow
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_compiled_fused_matches_oracle_in_float64(ref, kind):
    tc = TorchCompileBackend("cpu")
    case = fused_case(True, "float64")
    g_out, g_res = rand(6, 16, seed=5), rand(6, 16, seed=6)
    (out, res), (want_out, want_res) = (b.fused_add_norm(**case, eps=EPS, kind=kind, dtype="float64") for b in (tc, ref))
    assert np.array_equal(res, want_res)
    assert_close(out, want_out, "out")
    got, want = (b.fused_add_norm_vjp(**case, eps=EPS, kind=kind, dtype="float64", g_out=g_out, g_residual=g_res)
                 for b in (tc, ref))
    for name in ("dx", "dresidual", "dweight", "dbias"):
        assert_close(getattr(got, name), getattr(want, name), name)


# --- CUDA (written for GPU machines; skipped here) ---

@needs_cuda
@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=lambda c: f"{c.placement}-{c.branch}")
def test_cuda_float64_matches_oracle(ref, cfg):
    tg = TorchBackend("cuda")
    params, x, g = stack_case(cfg)
    assert_close(tg.stack_forward(cfg, params, x, "float64").states, ref.stack_forward(cfg, params, x, "float64").states,
                 "states")
    assert_close(tg.stack_vjp(cfg, params, x, g, "float64").dx, ref.stack_vjp(cfg, params, x, g, "float64").dx, "dx")
    case = fused_case(True, "float64")
    assert_close(tg.fused_add_norm(**case, eps=EPS, kind="rmsnorm", dtype="float64")[0],
                 ref.fused_add_norm(**case, eps=EPS, kind="rmsnorm", dtype="float64")[0], "fused out")


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_low_precision_runs(dtype):
    tg = TorchBackend("cuda")
    cfg = CONFIGS[1]
    params, x, g = stack_case(cfg, dtype)
    assert_native(tg.stack_vjp(cfg, params, x, g, dtype).dx, x.shape, dtype, "dx")
    f = tg.bench_fused_add_norm("rmsnorm", dtype, True, backward=True)
    native = [tg.to_native(a, dtype) for a in (x, g, params[0].norm_weight, params[0].norm_weight, x)]
    result = f(*native)
    tg.synchronize(result)
    assert result[0].shape == x.shape


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(LookupError, match="no CUDA device"):
        TorchBackend("cuda")

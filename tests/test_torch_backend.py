"""The PyTorch adapters against the float64 oracle (NumpyReference), plus their own contracts.

float64 must agree with the oracle to FLOAT64_RTOL (normwise, per tensor): only the order of operations
differs. That holds for single-sublayer layers, for every layer preset at every placement, and for every
parameter's gradient by name. float32 is checked against a loose sanity level, and lower dtypes only to
run, to return finite values of the right shape, and to return values that are representable in the dtype
(proof that they were computed there); how close they come is the conformance suite's business, with its
error budgets. torch.compile's first call takes ~25 s here, so
the compiled numerics run only with RESCONF_SLOW_TESTS=1; CUDA tests run only where CUDA is present.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resconf.backends.oracle import numpy_ops  # noqa: E402
from resconf.backends.torch import blocks as torch_blocks  # noqa: E402
from resconf.backends.config import FEATURES, BlockConfig  # noqa: E402
from resconf.backends.dtypes import round_to, unit_roundoff  # noqa: E402
from resconf.backends.oracle.numpy_ref import NumpyReference  # noqa: E402
from resconf.backends.params import LayerParams, draw_params  # noqa: E402
from resconf.backends.presets import ENCODER_DECODER, PRESETS, preset  # noqa: E402
from resconf.backends.torch.backend import TORCH_DTYPES, TorchBackend, TorchCompileBackend  # noqa: E402

FLOAT64_RTOL = 1e-12
FLOAT32_RTOL = 1e-4  # a sanity level only: the per-dtype budgets are the conformance suite's
# A gradient at or below this fraction of its layer's whole gradient is compared against that fraction: the key
# bias of attention without RoPE or QK-norm has gradient zero in exact arithmetic (softmax ignores a constant
# added to every score of a query), so both sides hold rounding noise (~1e-19 against a layer's ~20); and in a
# plain stack the second layer's scores are ~0, where q's and k's gradients (~1e-15) cancel in softmax's VJP.
GRAD_FLOOR = 1e-3
B, T = 2, 5
EPS = 1e-5
PLACEMENTS = ("pre", "post", "rezero", "deepnorm", "plain")
# Single-sublayer layers: every placement, norm, branch and GELU appears at least once; depth 2 so gradients
# cross a layer border.
CONFIGS = [
    BlockConfig(placement="pre", norm="layernorm", branch="mlp", gelu="tanh", depth=2, d_model=8),
    BlockConfig(placement="post", norm="rmsnorm", branch="attention", depth=2, d_model=8, n_heads=2),
    BlockConfig(placement="rezero", norm="layernorm", branch="linear", depth=2, d_model=8),
    BlockConfig(placement="deepnorm", norm="rmsnorm", branch="mlp", gelu="exact", depth=2, d_model=8),
    BlockConfig(placement="plain", norm="layernorm", branch="attention", depth=2, d_model=8, n_heads=4),
    BlockConfig(placement="pre", norm="rmsnorm", branch="attention", depth=2, d_model=8, n_heads=2),
]
# Single sublayers with the layer model's features, where the presets leave a combination out: QK-norm then
# RoPE with GQA, bidirectional; a gated GELU MLP without biases; every scale on a linear write.
FEATURE_CONFIGS = [
    BlockConfig(placement="pre", branch="attention", depth=2, d_model=16, n_heads=4, n_kv_heads=2, qk_norm=True,
                rope=True, rope_base=500.0, causal=False, final_norm=True),
    BlockConfig(placement="post", norm="layernorm", norm_bias=False, branch="mlp", gated=True, gelu="exact",
                bias=False, depth=2, d_model=8, d_ff=12),
    BlockConfig(placement="rezero", branch="linear", layer_scale=0.1, skip_scale=0.9, branch_scale=1.5, depth=2,
                d_model=8, final_norm=True),
    BlockConfig(placement="deepnorm", norm="rmsnorm", branch="mlp", activation="silu", skip_scale=1.25,
                layer_scale=0.5, depth=2, d_model=8),
]
PRESET_CASES = [(name, placement, final) for name in PRESETS for placement in PLACEMENTS
                for final in (False, True)]
LOW_DTYPES = ["float32", "bfloat16", "float16"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
slow = pytest.mark.skipif(not os.environ.get("RESCONF_SLOW_TESTS"), reason="torch.compile takes ~25 s; "
                          "set RESCONF_SLOW_TESTS=1")


def rand(*shape, seed, dtype="float64"):
    return round_to(np.random.default_rng(seed).standard_normal(shape), dtype)


def rel_err(got, want, floor=0.0):
    scale = max(np.linalg.norm(want), floor)
    return np.linalg.norm(got - want) / (scale if scale > 0 else 1.0)


def assert_close(got, want, what, rtol=FLOAT64_RTOL, floor=0.0):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = rel_err(got, want, floor)
    assert err <= rtol, f"{what}: normwise relative error {err:.2e} > {rtol:g}"


def stack_case(cfg, dtype="float64", seed=0):
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed, perturb=True))
    return params, rand(B, T, cfg.d_model, seed=seed + 1, dtype=dtype), rand(B, T, cfg.d_model, seed=seed + 2,
                                                                             dtype=dtype)


def preset_cfg(name, placement, final_norm):
    return PRESETS[name](placement=placement, depth=2, d_model=16, final_norm=final_norm)


def assert_stack_matches_oracle(tb, ref, cfg, dtype="float64", rtol=FLOAT64_RTOL):
    """Forward (states, writes, final) and VJP (dx and every parameter's gradient, by name) against the oracle
    on the same inputs, which are representable in dtype."""
    params, x, g = stack_case(cfg, dtype)
    got, want = tb.stack_forward(cfg, params, x, dtype), ref.stack_forward(cfg, params, x, dtype)
    assert got.states.shape == (cfg.n_updates + 1, B, T, cfg.d_model)
    assert_close(got.states, want.states, "states", rtol)
    assert_close(got.writes, want.writes, "writes", rtol)
    assert (got.final is None) == (want.final is None) == (not cfg.final_norm)
    if cfg.final_norm:
        assert_close(got.final, want.final, "final", rtol)
    got_g, want_g = tb.stack_vjp(cfg, params, x, g, dtype), ref.stack_vjp(cfg, params, x, g, dtype)
    assert_close(got_g.dx, want_g.dx, "dx", rtol)
    assert len(got_g.dparams) == cfg.depth
    for layer, (gp, wp) in enumerate(zip(got_g.dparams, want_g.dparams)):
        assert [n for n, _ in gp.items()] == [n for n, _ in wp.items()]
        floor = GRAD_FLOOR * np.sqrt(sum(np.sum(t**2) for _, t in wp.items()))
        for (name, a), (_, b) in zip(gp.items(), wp.items()):
            assert a.dtype == np.float64
            assert_close(a, b, f"layer {layer} d{name}", rtol, floor)


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

@pytest.mark.parametrize("cfg", CONFIGS + FEATURE_CONFIGS, ids=lambda c: c.describe())
def test_stack_matches_oracle_in_float64(tb, ref, cfg):
    assert_stack_matches_oracle(tb, ref, cfg)


@pytest.mark.parametrize("name, placement, final_norm", PRESET_CASES,
                         ids=[f"{n}-{p}{'-final' if f else ''}" for n, p, f in PRESET_CASES])
def test_preset_matches_oracle_in_float64(tb, ref, name, placement, final_norm):
    assert_stack_matches_oracle(tb, ref, preset_cfg(name, placement, final_norm))


@pytest.mark.parametrize("name, placement", [(n, p) for n in ENCODER_DECODER for p in PLACEMENTS])
def test_encoder_decoder_matches_oracle_in_float64(tb, ref, name, placement):
    """The decoder layer's cross-attention (the memory's gradient among the parameters') and the encoder part,
    with DeepNet's encoder-decoder constants (N = 12, M = 6) under deepnorm."""
    cfg = preset(name, placement=placement, depth=2, d_model=16, final_norm=placement == "pre", encoder_layers=12,
                 decoder_layers=6)
    assert_stack_matches_oracle(tb, ref, cfg)
    if placement == "pre":
        assert_stack_matches_oracle(tb, ref, cfg, "float32", FLOAT32_RTOL)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_near_oracle_in_float32(tb, ref, name):
    assert_stack_matches_oracle(tb, ref, preset_cfg(name, "pre", True), "float32", FLOAT32_RTOL)


def test_gqa_maps_kv_head_j_to_query_heads_j_times_groups(tb, ref, monkeypatch):
    """Query head h reads kv head h // groups (np.repeat on the head axis). The other natural mapping, kv head
    h % n_kv (np.tile), differs by far more than rounding on these weights, so agreement is no accident."""
    cfg = BlockConfig(branch="attention", n_heads=4, n_kv_heads=2, depth=1, d_model=16)
    params, x, _ = stack_case(cfg)
    got = tb.stack_forward(cfg, params, x, "float64").writes
    assert_close(got, ref.stack_forward(cfg, params, x, "float64").writes, "grouped-query attention")
    monkeypatch.setattr(numpy_ops, "repeat_kv", lambda a, groups: np.tile(a, (1, groups, 1, 1)))
    tiled = ref.stack_forward(cfg, params, x, "float64").writes
    assert rel_err(got, tiled) > 1e-3


@pytest.mark.parametrize("dtype, ulps", [("float64", 3), ("float32", 3)])
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_rope_matches_the_oracle_op(dtype, ulps, base):
    """Each output is x1 cos - x2 sin (or x2 cos + x1 sin) with cos and sin rounded once from float64 angles:
    within a few units of roundoff of |x1| + |x2| at every position up to 256. (Angles computed in float32
    err by 40 times that here: t * f is rounded before the cos is taken.)"""
    Tn, hd = 256, 16
    x = rand(2, 3, Tn, hd, seed=7, dtype=dtype)
    cos, sin = torch_blocks.rope_cos_sin(Tn, hd, base, TORCH_DTYPES[dtype], "cpu")
    got = torch_blocks.apply_rotary(torch.tensor(x).to(TORCH_DTYPES[dtype]), cos, sin).double().numpy()
    half = np.abs(x[..., : hd // 2]) + np.abs(x[..., hd // 2:])
    bound = ulps * unit_roundoff(dtype) * np.concatenate([half, half], axis=-1)
    assert np.all(np.abs(got - numpy_ops.rope(x, base)) <= bound)


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


LOW_CASES = CONFIGS[:2] + [preset_cfg("llama", "pre", True), preset_cfg("modern", "pre", False)]


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("cfg", LOW_CASES, ids=lambda c: c.describe())
def test_stack_runs_natively_in_low_precision(tb, cfg, dtype):
    params, x, g = stack_case(cfg, dtype)
    U, C = cfg.n_updates, cfg.d_model
    trace = tb.stack_forward(cfg, params, x, dtype)
    assert_native(trace.states, (U + 1, B, T, C), dtype, "states")
    assert_native(trace.writes, (U, B, T, C), dtype, "writes")
    if cfg.final_norm:
        assert_native(trace.final, (B, T, C), dtype, "final")
    grads = tb.stack_vjp(cfg, params, x, g, dtype)
    assert_native(grads.dx, (B, T, C), dtype, "dx")
    for gp, p in zip(grads.dparams, params):
        assert [n for n, _ in gp.items()] == [n for n, _ in p.items()]
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
    narrow = (params[0].replace({"mlp.w_down": params[0]["mlp.w_down"][:, :4]}),) + params[1:]
    with pytest.raises(ValueError, match=r"mlp.w_down has shape \(32, 4\), expected \(32, 8\)"):
        tb.stack_forward(cfg, narrow, x, "float64")
    lacking = (LayerParams({n: t for n, t in params[0].items() if n != "mlp.b_up"}),) + params[1:]
    with pytest.raises(ValueError, match=r"missing tensors \['mlp.b_up'\]"):
        tb.stack_vjp(cfg, lacking, x, x, "float64")
    with pytest.raises(ValueError, match="1 layer records for depth=2"):
        tb.stack_forward(cfg, params[:1], x, "float64")
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 4\)"):
        tb.stack_forward(cfg, params, x[..., :4], "float64")
    with pytest.raises(ValueError, match="does not claim dtype 'int8'"):
        tb.stack_forward(cfg, params, x, "int8")


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
@pytest.mark.parametrize("cfg", [CONFIGS[1], FEATURE_CONFIGS[0]], ids=["mha", "gqa-rope-qknorm"])
def test_empty_batch_or_sequence(tb, shape, cfg):
    """Attention (and RoPE's angles) are the ops most likely to trip on T = 0."""
    params, _, _ = stack_case(cfg)
    x = np.zeros(shape + (cfg.d_model,))
    assert tb.stack_forward(cfg, params, x, "float32").states.shape == (cfg.n_updates + 1,) + x.shape
    assert tb.stack_vjp(cfg, params, x, x, "float32").dx.shape == x.shape


def test_capabilities_claim_every_feature(tb):
    assert tb.capabilities.features == set(FEATURES)
    assert all(tb.capabilities.supports(preset_cfg(name, p, True)) for name, p, _ in PRESET_CASES)


def test_unused_tensors_get_zero_gradients(tb):
    """rezero and plain never call their sublayers' norms: the API wants zeros, not missing tensors."""
    cfg = preset_cfg("gpt2", "rezero", False)
    params, x, g = stack_case(cfg)
    grads = tb.stack_vjp(cfg, params, x, g, "float64").dparams[0]
    for name in ("attention.norm_weight", "attention.norm_bias", "mlp.norm_weight", "mlp.norm_bias"):
        assert not np.any(grads[name]), name
    assert np.any(grads["mlp.gate"])


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

    for cfg in (CONFIGS[0], preset_cfg("llama", "pre", True)):  # the final norm: the cotangent is on its output
        params, x, g = stack_case(cfg, "float32")
        grads = tb.bench_stack(cfg, params, "float32")(tb.to_native(x, "float32"), tb.to_native(g, "float32"))
        tb.synchronize(grads)
        assert np.array_equal(grads[0].double().numpy(), tb.stack_vjp(cfg, params, x, g, "float32").dx)


# --- torch.compile variant ---

def test_compile_backend_claims_fused_only():
    tc = TorchCompileBackend("cpu")
    assert not tc.capabilities.blocks and tc.capabilities.fused_kinds == {"rmsnorm", "layernorm"}
    cfg = CONFIGS[0]
    assert not tc.capabilities.supports(cfg)
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

CUDA_CASES = CONFIGS[:2] + [preset_cfg("llama", "pre", True), preset_cfg("gptj", "pre", False),
                             preset_cfg("modern", "post", True)]


@needs_cuda
@pytest.mark.parametrize("cfg", CUDA_CASES, ids=lambda c: c.describe())
def test_cuda_float64_matches_oracle(ref, cfg):
    tg = TorchBackend("cuda")
    assert_stack_matches_oracle(tg, ref, cfg)
    case = fused_case(True, "float64")
    assert_close(tg.fused_add_norm(**case, eps=EPS, kind="rmsnorm", dtype="float64")[0],
                 ref.fused_add_norm(**case, eps=EPS, kind="rmsnorm", dtype="float64")[0], "fused out")


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cfg", [CONFIGS[1], preset_cfg("llama", "pre", True)], ids=["mha", "llama"])
def test_cuda_low_precision_runs(dtype, cfg):
    tg = TorchBackend("cuda")
    params, x, g = stack_case(cfg, dtype)
    assert_native(tg.stack_vjp(cfg, params, x, g, dtype).dx, x.shape, dtype, "dx")
    f = tg.bench_fused_add_norm("rmsnorm", dtype, True, backward=True)
    weight = params[0]["attention.norm_weight"]
    native = [tg.to_native(a, dtype) for a in (x, g, weight, weight, x)]
    result = f(*native)
    tg.synchronize(result)
    assert result[0].shape == x.shape


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(LookupError, match="no CUDA device"):
        TorchBackend("cuda")

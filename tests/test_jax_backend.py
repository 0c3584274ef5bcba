"""The JAX backend against the float64 oracle (NumpyReference), in low precision, and its compile cache.

Every configuration compiles two programs (forward, VJP), so shapes stay tiny: the cost here is XLA compile
time, not arithmetic.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("jax")

from resconf.backends.jax import backend as jax_backend  # noqa: E402
from resconf.backends.config import BRANCHES, FEATURES, NORMS, PLACEMENTS, BlockConfig  # noqa: E402
from resconf.backends.dtypes import round_to  # noqa: E402
from resconf.backends.jax.backend import TRACES, JaxBackend  # noqa: E402
from resconf.backends.oracle.numpy_ref import NumpyReference  # noqa: E402
from resconf.backends.params import draw_params  # noqa: E402
from resconf.backends.presets import ENCODER_DECODER, PRESETS, preset  # noqa: E402
from tests import oracle_errors  # noqa: E402

RTOL_FLOAT64 = 1e-12  # the same function in float64: only summation order differs
RTOL_FLOAT32 = 1e-4  # float32: a sanity bound, the error budgets are the suite's business
SHAPE = (2, 3, 8)  # (B, T, C): d_model 8, two heads of 4
PRESET_SHAPE = (2, 5, 16)  # llama's four heads of 4 (RoPE on two pairs), modern's odd d_ff of 49
LOW_DTYPES = ("float32", "bfloat16", "float16")
CACHED_CFG = BlockConfig(placement="deepnorm", norm="rmsnorm", depth=3, d_model=SHAPE[-1], n_heads=2)  # float32


@pytest.fixture(scope="module")
def jx() -> JaxBackend:
    return JaxBackend("cpu")


@pytest.fixture(scope="module")
def ref() -> NumpyReference:
    return NumpyReference()


def _inputs(seed: int, shape=SHAPE, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    return oracle_errors.inputs(seed, shape, dtype)


def _errors(jx, ref, cfg: BlockConfig, shape, dtype: str = "float64", seed: int = 3) -> dict[str, float]:
    return oracle_errors.errors(jx, ref, cfg, shape, dtype, seed)


def _assert_agree(errors: dict[str, float], rtol: float, cfg: BlockConfig) -> None:
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, f"{worst}: relative error {errors[worst]:.2e} > {rtol:g}, {cfg.describe()}"


def _cfg(placement: str, norm: str, branch: str, depth: int = 2, final_norm: bool = False) -> BlockConfig:
    # exact GELU on rmsnorm, tanh on layernorm: both GELUs covered without doubling the compiles
    return BlockConfig(placement=placement, norm=norm, branch=branch, depth=depth, d_model=SHAPE[-1], n_heads=2,
                       gelu="exact" if norm == "rmsnorm" else "tanh", final_norm=final_norm)


# Every placement, norm and branch at least once (the conformance suite draws the full product); the final norm
# on every other one.
COVERING = [(p, NORMS[i % 2], BRANCHES[i % 3], i % 2 == 1) for i, p in enumerate(PLACEMENTS)] + [
    ("pre", "rmsnorm", "attention", False)]


@pytest.mark.parametrize("placement,norm,branch,final_norm", COVERING)
def test_single_sublayer_stack_matches_reference_float64(jx, ref, placement, norm, branch, final_norm):
    cfg = _cfg(placement, norm, branch, final_norm=final_norm)
    _assert_agree(_errors(jx, ref, cfg, SHAPE), RTOL_FLOAT64, cfg)


# Every preset under every placement (gptj and modern are parallel only under pre); the final norm
# alternates, so that it follows every preset and every placement at least once. A plain `pytest` runs each
# preset once, under a placement of its own (every placement once, the final norm alternating); the rest are
# heavy (a program each to compile, 3 s apiece).
PRESET_CASES = [pytest.param(name, placement, (i + j) % 2 == 0, marks=[] if j == 2 * i % len(PLACEMENTS)
                             else [pytest.mark.heavy])
                for i, name in enumerate(PRESETS) for j, placement in enumerate(PLACEMENTS)]


@pytest.mark.parametrize("name,placement,final_norm", PRESET_CASES)
def test_preset_stack_matches_reference_float64(jx, ref, name, placement, final_norm):
    """States, writes, final norm, dx and every parameter gradient of each layer."""
    cfg = preset(name, placement=placement, depth=2, d_model=PRESET_SHAPE[-1], final_norm=final_norm)
    _assert_agree(_errors(jx, ref, cfg, PRESET_SHAPE), RTOL_FLOAT64, cfg)


@pytest.mark.parametrize("name,placement", [("encdec_decoder", "pre"), ("encdec_decoder", "deepnorm"),
                                            ("encdec_encoder", "deepnorm")])
def test_encoder_decoder_matches_reference_float64(jx, ref, name, placement):
    """The decoder layer's cross-attention (the memory's gradient among the parameters') and the encoder part,
    with DeepNet's encoder-decoder constants (N = 12, M = 6) under deepnorm; every placement in the suite's XB."""
    assert name in ENCODER_DECODER
    cfg = preset(name, placement=placement, depth=2, d_model=PRESET_SHAPE[-1], final_norm=placement == "pre",
                 encoder_layers=12, decoder_layers=6)
    _assert_agree(_errors(jx, ref, cfg, PRESET_SHAPE), RTOL_FLOAT64, cfg)


@pytest.mark.parametrize("cfg", [
    preset("llama", placement="pre", final_norm=True, depth=2, d_model=16, skip_scale=0.5),
    preset("modern", placement="pre", final_norm=True, depth=2, d_model=16, gated=True, activation="silu"),
    preset("gpt2", placement="rezero", depth=2, d_model=16, n_kv_heads=1, causal=False, qk_norm=True, rope=True,
           rope_base=500.0, layer_scale=0.1, branch_scale=2.0)], ids=["llama-skip", "modern-swiglu", "gpt2-all"])
def test_feature_mixes_match_reference_float64(jx, ref, cfg):
    """Features the presets leave apart: skip_scale, a gated unshared-norm parallel layer, every attention
    feature on ReZero with a LayerScale and a branch scale."""
    _assert_agree(_errors(jx, ref, cfg, PRESET_SHAPE), RTOL_FLOAT64, cfg)


@pytest.mark.parametrize("name", ["llama", "modern"])
def test_preset_float32_is_close_to_reference(jx, ref, name):
    cfg = preset(name, placement="pre", depth=2, d_model=PRESET_SHAPE[-1], final_norm=True)
    _assert_agree(_errors(jx, ref, cfg, PRESET_SHAPE, dtype="float32"), RTOL_FLOAT32, cfg)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])  # float32 stacks: the tests above and below
@pytest.mark.parametrize("cfg", [_cfg("pre", "layernorm", "attention"),
                                 preset("llama", depth=2, d_model=16, final_norm=True)], ids=["attention", "llama"])
def test_stack_low_precision_is_finite_and_in_dtype(jx, cfg, dtype):
    shape = (2, 5, cfg.d_model)
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed=5, perturb=True))
    x, g = _inputs(seed=6, shape=shape, dtype=dtype)
    trace, grads = jx.stack_forward(cfg, params, x, dtype), jx.stack_vjp(cfg, params, x, g, dtype)
    assert trace.states.shape == (cfg.n_updates + 1, *shape) and trace.writes.shape == (cfg.n_updates, *shape)
    assert grads.dx.shape == shape and len(grads.dparams) == cfg.depth
    final = [("final", trace.final)] if cfg.final_norm else []
    for name, a in [("states", trace.states), *final, ("dx", grads.dx), *grads.dparams[-1].items()]:
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
        assert oracle_errors.rel_error(got, want) <= RTOL_FLOAT64, name
    got_g, want_g = jx.fused_add_norm_vjp(*args, g_out, g_res), ref.fused_add_norm_vjp(*args, g_out, g_res)
    for name in ("dx", "dresidual", "dweight") + (("dbias",) if with_bias else ()):
        assert oracle_errors.rel_error(getattr(got_g, name), getattr(want_g, name)) <= RTOL_FLOAT64, name
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
    """New parameter values, inputs, eps and scalars at the same (config, dtype, shapes, depth) reuse the
    compile."""
    cfg = CACHED_CFG
    x, g = _inputs(seed=12)
    jx.stack_forward(cfg, draw_params(cfg, seed=1), x, "float32")
    jx.stack_vjp(cfg, draw_params(cfg, seed=1), x, g, "float32")
    jx.fused_add_norm(x, g, np.ones(SHAPE[-1]), None, 1e-5, "rmsnorm", "float32")
    before = dict(TRACES)
    # eps, the skip scalar and branch_scale are traced; init only changes params; the attention fields are
    # blanked in an mlp-only layer
    again = dataclasses.replace(cfg, eps=1e-3, init="gpt2", skip_scale=0.5, branch_scale=0.75, causal=False,
                                n_heads=4, n_kv_heads=1, rope=True, qk_norm=True)
    jx.stack_forward(again, draw_params(again, seed=2), g, "float32")
    jx.stack_vjp(again, draw_params(again, seed=2), g, x, "float32")
    jx.fused_add_norm(g, x, np.full(SHAPE[-1], 2.0), None, 1e-3, "rmsnorm", "float32")
    assert dict(TRACES) == before


def test_depth_is_a_scan_length_not_a_program(jx):
    """Depths 2 and 8 of one configuration share one jitted function (the cache does not grow per depth)
    and lower to the same program but for the scan's length: one layer body, so compile time does not grow
    with depth. Each new depth is a new array shape, which jit traces once."""
    cfg = preset("llama", placement="pre", depth=2, d_model=16, final_norm=True)
    x, g = _inputs(seed=15, shape=(1, 4, 16))
    programs = {}
    for depth in (2, 8):
        deeper = dataclasses.replace(cfg, depth=depth)
        params = draw_params(deeper, seed=depth)
        functions = (jax_backend._stack_forward_fn.cache_info().currsize,
                     jax_backend._stack_vjp_fn.cache_info().currsize)
        traces = dict(TRACES)
        jx.stack_forward(deeper, params, x, "float64")
        jx.stack_vjp(deeper, params, x, g, "float64")
        if depth == 8:  # the depth-2 pass made the functions; depth 8 made none, and one trace of each
            assert functions == (jax_backend._stack_forward_fn.cache_info().currsize,
                                 jax_backend._stack_vjp_fn.cache_info().currsize)
            assert (TRACES["stack_vjp"] - traces["stack_vjp"], TRACES["stack_forward"] - traces["stack_forward"]) \
                == (1, 1)
        layers, final = jx._stack_params(params, "float64")
        lowered = jax_backend._stack_vjp_fn(jax_backend.jb.StaticBlock.of(deeper)).lower(
            jx.to_native(x, "float64"), layers, final, jx.to_native(g, "float64"),
            jax_backend.jb.Scalars.of(deeper))
        programs[depth] = lowered.as_text().count("dot_general")
    assert programs[2] == programs[8] > 0, programs


def test_capabilities_claim_every_feature(jx):
    assert jx.capabilities.features == frozenset(FEATURES)
    assert all(jx.capabilities.supports(preset(name, placement=p)) for name in PRESETS for p in PLACEMENTS)


def test_empty_batch_and_sequence(jx):
    cfg = preset("llama", depth=2, d_model=16, final_norm=True)
    params = draw_params(cfg, seed=0)
    for shape in [(0, 3, 16), (2, 0, 16)]:
        trace = jx.stack_forward(cfg, params, np.zeros(shape), "float64")
        assert trace.states.shape == (cfg.n_updates + 1, *shape) and trace.writes.shape == (cfg.n_updates, *shape)
        assert trace.final.shape == shape
    grads = jx.stack_vjp(cfg, params, np.zeros((2, 0, 16)), np.zeros((2, 0, 16)), "float64")
    assert grads.dx.shape == (2, 0, 16) and grads.dparams[0]["attention.wk"].shape == (16, 8)
    assert not np.any(grads.dparams[-1]["final.norm_weight"])  # no tokens, no gradient


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
    with pytest.raises(ValueError, match="layer 1"):
        jx.stack_forward(cfg, wrong, np.zeros(SHAPE), "float32")
    with pytest.raises(ValueError, match="1 layer records for depth=2"):
        jx.stack_vjp(cfg, params[:1], np.zeros(SHAPE), np.zeros(SHAPE), "float32")

"""The Flax NNX and Equinox Pre-LN blocks against the float64 oracle (NumpyReference), their compile cache,
claims and errors, and the library behaviours they expose (docs/adapter.md, "Flax and Equinox blocks").

Every configuration compiles two programs (forward, VJP) per library, so shapes stay tiny.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest

from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import round_to
from resconf.backends.oracle.numpy_ref import NumpyReference
from resconf.backends.params import draw_params
from resconf.backends.presets import preset
from resconf.backends.registry import BUILTIN
from tests import oracle_errors

RTOL_FLOAT64 = 1e-12  # the same function in float64: only summation order differs
FLOAT32_SOFTMAX = 1e-5  # flax's attention in float64: softmax in float32 (see test_flax_float64_attention_softmax)
SHAPE = (2, 5, 16)  # (B, T, C)

# The layers each library expresses: gpt2 (with a final norm), encoder, and the claimed features in mixes.
CASES = {
    "gpt2-final": preset("gpt2", depth=2, d_model=16, final_norm=True),
    "encoder": preset("encoder", depth=3, d_model=16),
    "rms-swiglu-nobias": preset("gpt2", depth=2, d_model=16, norm="rmsnorm", gated=True, activation="silu",
                                bias=False, final_norm=True),
    "relu-nonormbias-exact": preset("gpt2", depth=2, d_model=16, activation="relu", norm_bias=False, causal=False),
}
GQA = preset("gpt2", depth=2, d_model=16, n_heads=4, n_kv_heads=2)  # flax only (nnx num_kv_heads)


@pytest.fixture(scope="module")
def ref() -> NumpyReference:
    return NumpyReference()


@pytest.fixture(scope="module")
def eqx_backend():
    pytest.importorskip("equinox")
    from resconf.backends.modules.equinox_block import EquinoxBlockBackend
    return EquinoxBlockBackend("cpu")


@pytest.fixture(scope="module")
def flax_backend():
    pytest.importorskip("flax")
    from resconf.backends.modules.flax_block import FlaxBlockBackend

    class FlaxInFloat64(FlaxBlockBackend):
        """flax_block does not claim float64 (its softmax is float32 anyway); the mapping of every
        parameter is still checked tightest there, so the tests unlock it."""
        dtypes_on = {"cpu": FlaxBlockBackend.dtypes_on["cpu"] | {"float64"}}

    return FlaxInFloat64("cpu")


def _errors(backend, ref, cfg: BlockConfig, shape=SHAPE, dtype: str = "float64", seed: int = 3,
            zero: tuple[str, ...] = ()) -> dict[str, float]:
    return oracle_errors.errors(backend, ref, cfg, shape, dtype, seed, zero)


def _assert_agree(errors: dict[str, float], rtol: float, cfg: BlockConfig, what: str = "") -> None:
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, f"{what}{worst}: relative error {errors[worst]:.2e} > {rtol:g}, {cfg.describe()}"


# --- Equinox: float64 throughout, so everything is tight ---

@pytest.mark.parametrize("case", list(CASES))
def test_equinox_matches_reference_float64(eqx_backend, ref, case):
    """States, writes, final norm, dx and every parameter gradient of each layer."""
    _assert_agree(_errors(eqx_backend, ref, CASES[case]), RTOL_FLOAT64, CASES[case])


# --- Flax: tight wherever the attention's softmax does not reach ---

@pytest.mark.parametrize("case", list(CASES))
def test_flax_matches_reference_float64_without_softmax(flax_backend, ref, case):
    """With the attention's output projection and bias zero, the attention writes exactly 0 and passes no
    gradient back into q, k, v or the stream; everything but d wo (softmax(...) v, rounded through
    float32) is then the float64 computation, and must be tight: the norms, the MLP, the final norm, dx."""
    cfg = CASES[case]
    errors = _errors(flax_backend, ref, cfg, zero=("attention.wo", "attention.bo"))
    softmax = {k: v for k, v in errors.items() if k.startswith("dattention.wo")}
    _assert_agree({k: v for k, v in errors.items() if k not in softmax}, RTOL_FLOAT64, cfg)
    _assert_agree(softmax, FLOAT32_SOFTMAX, cfg, "d wo, float32 softmax: ")


@pytest.mark.parametrize("case", list(CASES))
def test_flax_matches_reference_float64(flax_backend, ref, case):
    """Every output and gradient at float32-softmax accuracy (the finding below)."""
    _assert_agree(_errors(flax_backend, ref, CASES[case]), FLOAT32_SOFTMAX, CASES[case])


def test_flax_gqa_matches_reference_float64(flax_backend, ref):
    """nnx.MultiHeadAttention's num_kv_heads groups query heads as resconf does (kv head j serves query
    heads j*groups .. (j+1)*groups - 1)."""
    _assert_agree(_errors(flax_backend, ref, GQA), FLOAT32_SOFTMAX, GQA)


def test_flax_float64_attention_softmax(flax_backend, ref):
    """Finding: nnx.MultiHeadAttention's default attention_fn (nnx.dot_product_attention -> jax.nn.
    dot_product_attention) takes its softmax in float32 even for float64 inputs, so a float64 flax layer
    is float32-accurate wherever attention reaches. Pinned here: if flax changes it, this fails and the
    expected failures in conformance/xfails/flax_block.toml go stale."""
    errors = _errors(flax_backend, ref, CASES["gpt2-final"])
    assert 1e-10 < max(errors.values()) <= FLOAT32_SOFTMAX, errors


def test_nnx_layernorm_fast_variance_finding():
    """Finding: nnx.LayerNorm's default use_fast_variance=True computes Var = E[x^2] - E[x]^2 (in float32 for
    float32, bfloat16 and float16 inputs). On tokens of mean 1000 and unit spread its float32 output is off by
    ~1e-1 relative, the two-pass variance (use_fast_variance=False, and eqx.nn.LayerNorm) by ~2e-5; at mean
    3000 the variance cancels to 0 and the output is ~300 times too large."""
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(0)
    x = np.asarray(jnp.asarray(1000.0 + rng.standard_normal((256, 64)), jnp.float32)).astype(np.float64)
    h = x - x.mean(-1, keepdims=True)
    want = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5)

    def error(fast: bool) -> float:
        norm = nnx.LayerNorm(64, epsilon=1e-5, use_fast_variance=fast, rngs=nnx.Rngs(0))
        return oracle_errors.rel_error(np.asarray(norm(jnp.asarray(x, jnp.float32)), np.float64), want)

    assert error(fast=True) > 1e-2 and error(fast=False) < 1e-4, (error(True), error(False))


# --- claims, caching, errors ---

@pytest.mark.parametrize("which", ["flax_backend", "eqx_backend"])
def test_claims_only_transformer_layers(request, which):
    backend = request.getfixturevalue(which)
    caps = backend.capabilities
    assert caps.supports(preset("gpt2", depth=1)) and caps.supports(preset("encoder", depth=1))
    for cfg in (BlockConfig(branch="mlp"), preset("gpt2", placement="post"), preset("llama"), preset("gptj")):
        assert not caps.supports(cfg), cfg.describe()
    assert "has layers of sublayers attention+mlp only" in caps.why_not(BlockConfig(branch="attention"))
    assert caps.supports(GQA) == (which == "flax_backend")
    # nnx attention in float16 asks XLA:CPU for the F16_F16_F32 dot algorithm, which fails to compile there
    assert ("float16" in caps.dtypes) == (which == "eqx_backend")
    if which == "flax_backend":
        from resconf.backends.modules.flax_block import FlaxBlockBackend
        assert "float64" not in FlaxBlockBackend("cpu").capabilities.dtypes  # float32 softmax: not claimed


@pytest.mark.parametrize("which", ["flax_backend", "eqx_backend"])
def test_compiles_once_per_structure(request, ref, which):
    """New values (and new parameters) of the same structure reuse the compiled programs."""
    backend = request.getfixturevalue(which)
    module = importlib.import_module(BUILTIN[backend.name].target.split(":")[0])  # the adapter module counts traces
    cfg = preset("gpt2", depth=3, d_model=8, n_heads=2, final_norm=True)
    shape = (1, 4, 8)
    for seed in range(3):
        params = draw_params(cfg, seed=seed, perturb=True)
        x = np.random.default_rng(seed).standard_normal(shape)
        backend.stack_forward(cfg, params, x, "float32")
        backend.stack_vjp(cfg, params, x, x, "float32")
        if seed == 0:
            traces = dict(module.TRACES)
    assert dict(module.TRACES) == traces


@pytest.mark.parametrize("which", ["flax_backend", "eqx_backend"])
def test_rejects_bad_shapes_and_unclaimed(request, which):
    backend = request.getfixturevalue(which)
    cfg = preset("gpt2", depth=1, d_model=8, n_heads=2)
    (p,) = draw_params(cfg, seed=0)
    x = np.zeros((1, 3, 8))
    with pytest.raises(ValueError, match=r"mlp.w_down has shape \(32, 11\), expected \(32, 8\)"):
        backend.stack_forward(cfg, (p.replace({"mlp.w_down": np.zeros((32, 11))}),), x, "float32")
    with pytest.raises(ValueError, match=r"x has shape \(1, 3, 9\)"):
        backend.stack_forward(cfg, (p,), np.zeros((1, 3, 9)), "float32")
    with pytest.raises(ValueError, match=r"g has shape \(1, 3, 7\) but x has shape \(1, 3, 8\)"):
        backend.stack_vjp(cfg, (p,), x, np.zeros((1, 3, 7)), "float32")
    with pytest.raises(ValueError, match="does not claim"):
        backend.stack_forward(dataclasses.replace(cfg, placement="post"), (p,), x, "float32")


# --- execution modes (backends/modes.py) ---

def test_default_precision_traces_its_own_program_and_equals_eager_on_the_cpu(eqx_backend):
    """eager traces under "highest", default_precision under the library default: jit's cache keeps them
    apart (one more trace), and XLA:CPU computes float32 at full precision either way."""
    from resconf.backends.modules import equinox_block
    cfg = CASES["encoder"]
    params, (x, _) = draw_params(cfg, seed=3, perturb=True), oracle_errors.inputs(4, SHAPE)
    eager = eqx_backend.stack_forward(cfg, params, x, "float32")
    before = equinox_block.TRACES["stack_forward"]
    moded = eqx_backend.in_mode("default_precision").stack_forward(cfg, params, x, "float32")
    assert equinox_block.TRACES["stack_forward"] == before + 1
    np.testing.assert_array_equal(moded.states, eager.states)


def test_flax_mixed_computes_sublayers_in_bfloat16_on_a_float32_stream(flax_backend, ref):
    """Flax's own mixed precision (dtype=bfloat16, param_dtype=float32): writes carry bfloat16 rounding, the
    stream adds them in float32, the final norm comes back in the stream's dtype."""
    cfg = CASES["gpt2-final"]
    params, (x, _) = draw_params(cfg, seed=3, perturb=True), oracle_errors.inputs(4, SHAPE)
    got = flax_backend.in_mode("mixed").stack_forward(cfg, params, x, "float32")
    want = ref.stack_forward(cfg, params, x, "float64")
    rel = oracle_errors.rel_error
    assert 1e-4 < rel(got.writes, want.writes) < 2e-2  # bfloat16's u is 3.9e-3
    assert rel(got.states, want.states) < 1e-3 and rel(got.final, want.final) < 2e-2


def test_equinox_does_not_claim_mixed(eqx_backend):
    from resconf.backends.modes import why_not
    assert why_not("mixed", eqx_backend.capabilities.modes, "equinox_block", "cpu", "float32", ("blocks",)) == \
        "equinox_block on cpu does not claim mode mixed"

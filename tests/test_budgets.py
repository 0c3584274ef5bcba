"""The error budgets (conformance/budgets.py) separate correct backends from broken ones: correct
backends sit well inside them across seeds (the positive controls run the whole suite in
tests/test_controls.py), a skip scaled by (1 + 2^-10) and a weight gradient summed in
bfloat16 fall far outside, and the baseline that measures each case rounds independently of the oracle.
The nightly-sized calibration is `resconf calibrate` (docs/spec.md); this is its quick form."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from resconf.backends.config import DTYPES, BlockConfig
from resconf.backends.dtypes import NARROW_DTYPES, round_to, unit_roundoff
from resconf.backends.params import draw_params
from resconf.backends.registry import installed_builtins, load_backend
from resconf.backends.presets import preset
from resconf.conformance import budgets
from resconf.conformance.baseline import Baselines
from resconf.conformance.hypothesis_helpers import normal_input, offset_input, params_for
from resconf.conformance.recorder import PropertyRecorder, baseline_error, relative_error
from resconf.conformance.test_agreement import vjp_within_budget
from tests.mutants import Bfloat16WeightGradient, FastVariance, KeyBiasGradientFromValue

MARGIN = 1.5  # a correct backend's worst error must stay below budget / MARGIN
SEEDS = range(6)
STRUCTURES = [BlockConfig(placement="pre", norm="layernorm", branch="mlp", depth=4, d_model=32),
              BlockConfig(placement="post", norm="rmsnorm", branch="attention", depth=4, d_model=32),
              preset("llama", depth=2, d_model=32), preset("modern", depth=2, d_model=32),
              preset("gpt2", placement="post", depth=2, d_model=32)]
ORACLE, BASELINE = load_backend("numpy"), Baselines()


def _case(cfg: BlockConfig, seed: int, dtype: str, shape=(2, 8, 32)):
    rng = np.random.default_rng(seed)
    x, g = (round_to(rng.standard_normal(shape), dtype) for _ in range(2))
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed, perturb=True))
    return x, g, params


def _slacks(backend, cfg: BlockConfig, seed: int, dtype: str):
    """measured / allowed for x_L and every gradient of one case."""
    x, g, params = _case(cfg, seed, dtype)
    got, want = (b.stack_forward(cfg, params, x, dtype).states[-1] for b in (backend, ORACLE))
    base = BASELINE.stack_forward(cfg, params, x, dtype).pick(lambda t: t.states[-1])()
    yield "x_L", relative_error(got, want) / budgets.budget("forward", dtype, baseline_error(base, want), 4).allowed
    got, want = (b.stack_vjp(cfg, params, x, g, dtype) for b in (backend, ORACLE))
    draws = BASELINE.stack_vjp(cfg, params, x, g, dtype)
    pairs = [("dx", got.dx, want.dx, draws.pick(lambda gr: gr.dx))]
    pairs += [(f"d{name}[{layer}]", a, want.dparams[layer][name],
               draws.pick(lambda gr, layer=layer, name=name: gr.dparams[layer][name]))
              for layer, p in enumerate(got.dparams) for name, a in p.items()]
    for what, a, b, base in pairs:
        yield what, relative_error(a, b) / budgets.budget("gradient", dtype, baseline_error(base(), b), 4).allowed


def _margin_cases(names: list[str]) -> list:
    """(backend, dtype) pairs: torch in float32 in a plain `pytest`, every other pair heavy (a minute each for JAX's
    compiles; the main job gates the same backends on every property)."""
    return [pytest.param(name, dtype, marks=[] if (name, dtype) == ("torch", "float32") else [pytest.mark.heavy])
            for name in names for dtype in DTYPES]


@pytest.mark.parametrize("name, dtype", _margin_cases([n for n in ("torch", "jax") if n in installed_builtins()]))
def test_correct_backends_sit_well_inside_their_budgets(name, dtype):
    backend = load_backend(name)
    worst = max((slack, what, cfg.placement, seed) for cfg in STRUCTURES for seed in SEEDS
                for what, slack in _slacks(backend, cfg, seed, dtype))
    assert worst[0] <= 1 / MARGIN, f"{name} {dtype}: {worst[1]} used {worst[0]:.2f} of its budget ({worst[2]}, seed {worst[3]})"


# XB-1 on tokens with a large common mean (conformance/test_agreement.test_forward_offset_mean): Pre-LN layernorm
# stacks, a preset with its final norm; |mean| / spread in {1e2, 1e3}, spread 1e-2 or 1.
OFFSET_STRUCTURES = [STRUCTURES[0], BlockConfig(placement="pre", norm="layernorm", branch="attention", d_model=32),
                     dataclasses.replace(preset("gpt2", depth=2, d_model=32), final_norm=True)]
OFFSET_DRAWS = [(offset, scale) for offset in (1e2, 1e3) for scale in (1e-2, 1.0)]
CONTROLS = ["control_reversed", "control_fma", "control_pairwise", "control_blocked", "control_wide"]


def _offset_slacks(backend, cfg: BlockConfig, seed: int, dtype: str, offset: float, scale: float):
    """measured / allowed for the final norm, x_L and the writes of one offset-mean case."""
    x = offset_input(seed, (2, 8, 32), scale, offset, dtype)
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed, perturb=True))
    got, want = (b.stack_forward(cfg, params, x, dtype) for b in (backend, ORACLE))
    base = BASELINE.stack_forward(cfg, params, x, dtype)
    parts = {"x_L": lambda t: t.states[-1], "writes": lambda t: t.writes}
    if cfg.final_norm:
        parts["final norm"] = lambda t: t.final
    for what, part in parts.items():
        allowed = budgets.budget("forward", dtype, baseline_error(base.pick(part)(), part(want)), cfg.n_updates).allowed
        yield what, relative_error(part(got), part(want)) / allowed


@pytest.mark.parametrize("name, dtype", _margin_cases([n for n in ("torch", "jax") if n in installed_builtins()]
                                                     + CONTROLS))
def test_correct_backends_sit_well_inside_their_budgets_on_offset_means(name, dtype):
    """A two-pass (or Welford) layernorm's error grows as u_acc |mean| / spread, and so does the baseline's,
    itself two-pass: measured, every correct backend and control stays near 1 / RATIO of its budget."""
    backend = load_backend(name)
    worst = max((slack, what, cfg.describe(), seed, offset, scale) for cfg in OFFSET_STRUCTURES for seed in SEEDS
                for offset, scale in OFFSET_DRAWS for what, slack in _offset_slacks(backend, cfg, seed, dtype, offset, scale))
    assert worst[0] <= 1 / MARGIN, (f"{name} {dtype}: {worst[1]} used {worst[0]:.2f} of its budget ({worst[2]}, "
                                    f"seed {worst[3]}, offset {worst[4]:g}, scale {worst[5]:g})")


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d not in NARROW_DTYPES])
def test_a_one_pass_variance_is_far_outside_on_offset_means(dtype):
    """Var = E[x^2] - E[x]^2 (flax.nnx.LayerNorm's default) loses u (mean / spread)^2 of the variance to
    cancellation, against the two-pass u (mean / spread) sqrt(C): at 1e3, far outside."""
    worst = max(slack for cfg in OFFSET_STRUCTURES for seed in range(2)
                for _, slack in _offset_slacks(FastVariance(), cfg, seed, dtype, 1e3, 1.0))
    assert worst > 10, f"the one-pass variance used only {worst:.2f} of its budget"


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d not in NARROW_DTYPES])
def test_a_skip_scaled_by_one_plus_2_to_the_minus_10_is_far_outside(dtype):
    """y = (1 + 2^-10) x + F instead of x + F: relative error ~ 2^-10 ||x|| / ||y|| ~ 1e-3 per block."""
    cfg = dataclasses.replace(STRUCTURES[0], depth=1)
    x, _, params = _case(cfg, 0, dtype)
    y = ORACLE.stack_forward(cfg, params, x, dtype).states[-1]
    base = BASELINE.stack_forward(cfg, params, x, dtype).pick(lambda t: t.states[-1])()
    allowed = budgets.budget("forward", dtype, baseline_error(base, y)).allowed
    assert relative_error(y + 2.0**-10 * x, y) > 100 * allowed


def test_a_weight_gradient_summed_in_bfloat16_is_outside_over_many_tokens():
    """Summed token after token in bfloat16, d w_out over 8192 tokens errs by ~sqrt(8192 / 6) u; its budget
    is set by float32 accumulation (the baseline), so the mutant lands several budgets out."""
    cfg = BlockConfig(placement="pre", norm="rmsnorm", branch="mlp", d_model=16)
    x, g, params = _case(cfg, 1, "bfloat16", shape=(32, 256, 16))
    got, want = (b.stack_vjp(cfg, params, x, g, "bfloat16").dparams[0]["mlp.w_down"]
                 for b in (Bfloat16WeightGradient(), ORACLE))
    base = BASELINE.stack_vjp(cfg, params, x, g, "bfloat16").pick(lambda gr: gr.dparams[0]["mlp.w_down"])()
    allowed = budgets.budget("gradient", "bfloat16", baseline_error(base, want)).allowed
    assert relative_error(got, want) > 2 * allowed, f"{relative_error(got, want):.3g} vs budget {allowed:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_baseline_rounds_apart_from_the_oracle(dtype):
    """Its error is a few u on a generic case (not 0, as reproducing the oracle's rounding would give,
    nor far more, as a wrong computation would)."""
    cfg = STRUCTURES[0]
    x, _, params = _case(cfg, 2, dtype)
    want = ORACLE.stack_forward(cfg, params, x, dtype).writes
    e = baseline_error(BASELINE.stack_forward(cfg, params, x, dtype).pick(lambda t: t.writes)(), want)
    assert 0.1 * unit_roundoff(dtype) < e < 20 * unit_roundoff(dtype)


def test_a_budget_is_its_floor_or_ratio_times_the_baseline():
    u = unit_roundoff("float32")
    small, large = budgets.budget("forward", "float32", 0.01 * u, depth=4), budgets.budget("gradient", "float32", 3 * u)
    assert small.allowed == budgets.FLOOR_ULPS["forward"] * u * 2
    assert large.allowed == budgets.RATIO * 3 * u
    assert "floor" in str(small) and "baseline" in str(large)
    with pytest.raises(ValueError, match="kind='backward' is not one of"):
        budgets.budget("backward", "float32", 0.0)


# Issue 20: torch, bfloat16, XB-2 on the GPT-2 preset in deepnorm placement (nightly profile), x scale 0.01, seed 0:
# the key bias's gradient, zero in exact arithmetic (budgets.py, 6.), was compared with the oracle's float64
# rounding residue and failed, 1.63e13 > 1.44e13.
ZERO_CASE = dict(cfg=preset("gpt2", placement="deepnorm", depth=4, d_model=16), shape=(2, 4, 16), seed=0, scale=0.01)


def _zero_case(dtype: str = "bfloat16"):
    cfg, shape, seed = ZERO_CASE["cfg"], ZERO_CASE["shape"], ZERO_CASE["seed"]
    x, g = normal_input(seed, shape, ZERO_CASE["scale"], dtype), normal_input(seed + 1, shape, 1.0, dtype)
    return cfg, x, g, params_for(ORACLE, cfg, seed, dtype, perturb=True)


def _compare(grads, dtype: str = "bfloat16") -> None:
    """XB-2's comparison of every gradient (conformance/test_agreement.vjp_within_budget) on the zero case."""
    cfg, x, g, params = _zero_case(dtype)
    want, base = ORACLE.stack_vjp(cfg, params, x, g, dtype), BASELINE.stack_vjp(cfg, params, x, g, dtype)
    vjp_within_budget(PropertyRecorder("XB-2", "the zero case", "-"), cfg, params, x, g, dtype, grads, want, base)


def test_a_gradient_zero_in_exact_arithmetic_is_measured_against_its_rounding_scale():
    """The oracle's key-bias gradient plus rounding noise of 2 u S (S its error scale, budgets.py 6.; a correct
    backend's stays below 1 u S sqrt(L)) passes; against the oracle's own residue it was 1e13 times its norm."""
    cfg, x, g, params = _zero_case()
    want = ORACLE.stack_vjp(cfg, params, x, g, "bfloat16")
    scales = {layer: s for (layer, name), s in budgets.score_side_scales(cfg, params, x, g).items()
              if name == "attention.bk"}
    assert set(scales) == set(range(cfg.depth)) and all(s > 1e6 * np.linalg.norm(want.dparams[layer]["attention.bk"])
                                                        for layer, s in scales.items())
    noise = np.random.default_rng(0).standard_normal((cfg.depth, cfg.d_model))
    noisy = tuple(p.replace({"attention.bk": p["attention.bk"] + 2 * unit_roundoff("bfloat16") * scales[layer]
                             * noise[layer] / np.linalg.norm(noise[layer])}) for layer, p in enumerate(want.dparams))
    _compare(dataclasses.replace(want, dparams=noisy))


@pytest.mark.skipif("torch" not in installed_builtins(), reason="torch is not installed")
def test_torch_passes_the_zero_case_of_issue_20():
    cfg, x, g, params = _zero_case()
    _compare(load_backend("torch").stack_vjp(cfg, params, x, g, "bfloat16"))


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_a_key_bias_gradient_at_the_scale_of_the_others_is_far_outside(dtype):
    """Measured against its rounding scale, a wrong key-bias gradient (the value bias's) still fails. (In
    float16 this case's gradients lie below hh.resolvable's range and are not compared.)"""
    cfg, x, g, params = _zero_case(dtype)
    with pytest.raises(AssertionError, match="d attention.bk in layer"):
        _compare(KeyBiasGradientFromValue().stack_vjp(cfg, params, x, g, dtype), dtype)


# Issue 20: torch, bfloat16, XB-2 on the modern preset in deepnorm placement (nightly, seed 119): torch rounds the
# stream state to bfloat16, which flipped a ReLU pre-activation at |a| / sum |terms| = 3e-4 < u, and d mlp.w_up
# failed, 0.142 > 0.0404. KINK_CFG's mlp sees the raw stream, so a one-ulp change of x_0 plays that rounding.
KINK_CFG = BlockConfig(placement="deepnorm", norm="layernorm", branch="mlp", activation="relu", depth=1, d_model=16)


def _kink_case(dtype: str = "bfloat16"):
    """(x, x', params): x and x' one ulp apart in one element, the up bias set so that one pre-activation,
    within rounding of 0, takes opposite signs at x and x' (the derivative a correct backend takes there is
    undetermined)."""
    shape, seed = (1, 2, 16), 3
    x = normal_input(seed, shape, 1.0, dtype)
    params = params_for(ORACLE, KINK_CFG, seed, dtype, perturb=True)
    w = params[0]["mlp.w_up"]
    k, j = np.unravel_index(int(np.argmax(np.abs(x[0, 0][:, None] * w))), w.shape)  # the largest term
    ulp = 2 * unit_roundoff(dtype) * 2.0 ** np.floor(np.log2(abs(x[0, 0, k])))
    nudged = x.copy()
    nudged[0, 0, k] += ulp * np.sign(x[0, 0, k])
    a0, a1 = x[0, 0] @ w[:, j], nudged[0, 0] @ w[:, j]
    b = params[0]["mlp.b_up"].copy()
    b[j] = -(a0 + a1) / 2  # between the two: the pre-activation flips sign
    assert (a0 + b[j]) * (a1 + b[j]) < 0 and abs(a0 + b[j]) < unit_roundoff(dtype) * np.abs(x[0, 0]) @ np.abs(w[:, j])
    return x, nudged, (params[0].replace({"mlp.b_up": b}),)


def test_a_relu_kink_within_rounding_may_go_either_way():
    """The oracle's gradient at x', one ulp from x, takes the other side of a ReLU kink that x's rounding cannot
    resolve: a correct backend that rounds the stream there computes it. Measured against the oracle's at x with
    the kinks' contribution allowed (budgets.py 7.) it passes; without, d mlp.w_up erred by 2x its budget
    (0.0699 > 0.0335). (The up bias is not a bfloat16 value: the oracle and the baseline take it as given.)"""
    x, nudged, params = _kink_case()
    g = normal_input(4, x.shape, 1.0, "bfloat16")
    got = ORACLE.stack_vjp(KINK_CFG, params, nudged, g, "bfloat16")
    want, base = (b.stack_vjp(KINK_CFG, params, x, g, "bfloat16") for b in (ORACLE, BASELINE))
    vjp_within_budget(PropertyRecorder("XB-2", "the kink case", "-"), KINK_CFG, params, x, g, "bfloat16", got, want,
                      base)
    contributions = budgets.kink_contributions(KINK_CFG, params, x, g, "bfloat16")
    assert contributions[(0, "mlp.w_up")] > 0 and not budgets.kink_contributions(KINK_CFG, params, x, g, "float32")

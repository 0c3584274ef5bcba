"""XB: agreement with the float64 oracle, determinism and layout, for residual blocks and stacks.

Inputs and parameters are rounded to the dtype first, so the oracle computes the same function and
only the backend's intermediate roundings remain. Each comparison's budget is measured on the case by
the baseline (conformance/budgets.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.config import PLACEMENTS, BlockConfig
from resconf.backends.presets import preset
from resconf.conformance import budgets, profiles
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.recorder import baseline_error, relative_error
from resconf.conformance.requirements import require_branch, require_config, require_cpu, require_placement


# Where the branch sees the raw stream (every placement but pre), large inputs saturate attention's
# softmax and GELU: the comparison would then measure the problem's conditioning, not the backend.
RAW_STREAM_SCALES = st.sampled_from((1e-2, 1.0))


def _param(layer: int, name: str):
    """Picks parameter `name` of layer `layer` from a StackGrads."""
    return lambda grads: grads.dparams[layer][name]


def _stack_case(data, backend, case, dtype, placement, prop, layer):
    if layer == hh.ENCDEC and placement not in ENCDEC_PLACEMENTS:
        pytest.skip(f"the encoder-decoder's parts are checked at placements {ENCDEC_PLACEMENTS}")
    # A plain stack (no skip) of several two-sublayer layers shrinks the stream until attention sees only its
    # biases, the same for every token: the query gradient is then the residue of a cancellation, and the
    # comparison measures conditioning (seen: 1e6-1e7 relative in bfloat16 for torch and jax alike).
    depths = (1,) if placement == "plain" and layer != "block" else (1, 4)
    shape, cfg = data.draw(hh.structures(backend, case, placement, "standard", depths=depths, layer=layer),
                           label="structure")
    if layer != "block" and placement == "pre":
        cfg = hh.with_final_norm(backend, cfg)  # the layers people ship end the stack with a norm
    scales = hh.scales if placement == "pre" else RAW_STREAM_SCALES
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(scales, label="scale")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale)
    x, g = hh.normal_input(seed, shape, scale, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    return cfg, x, g, hh.params_for(backend, cfg, seed, dtype, perturb=True)


def _forward_within_budget(prop, cfg, dtype, got, want, base) -> None:
    """The stack's output (x_U, or its final norm), and every write, within the case's forward budget."""
    if cfg.final_norm:
        prop.within_budget("the final norm", got.final, want.final, base.pick(lambda t: t.final), "forward", dtype,
                           cfg.n_updates)
    prop.within_budget("x_U", got.states[-1], want.states[-1], base.pick(lambda t: t.states[-1]), "forward", dtype,
                       cfg.n_updates)
    prop.within_budget("the writes", got.writes, want.writes, base.pick(lambda t: t.writes), "forward",
                       dtype, cfg.n_updates)


# XB-1 and XB-2 also run the two parts of an encoder-decoder (hh.ENCDEC): a case of their own, so that the
# presets' rotation stays as it is; at the placements encoder-decoders are built with (T5, the original
# Transformer, DeepNet), as every case compiles a program of its own in JAX
AGREEMENT_LAYERS = hh.LAYERS + (hh.ENCDEC,)
ENCDEC_PLACEMENTS = ("pre", "post", "deepnorm")


@pytest.mark.property("XB-1")
@pytest.mark.parametrize("layer", AGREEMENT_LAYERS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@given(data=st.data())
def test_forward_matches_oracle(subject, oracle, baseline, case, dtype, placement, layer, prop, data):
    """The stack's output (x_U, or its final norm), every stream state and every write within the case's
    forward budget."""
    require_placement(subject, placement)
    cfg, x, _, params = _stack_case(data, subject, case, dtype, placement, prop, layer)
    got, want, base = (b.stack_forward(cfg, params, x, dtype) for b in (subject, oracle, baseline))
    _forward_within_budget(prop, cfg, dtype, got, want, base)


# Residual streams carry large per-token means (massive activations): |mean| / spread of 1e2 and 1e3. A
# layernorm that takes Var = E[x^2] - E[x]^2 cancels there (float32, C = 64: 9e-4 relative at 1e2, 1e-1 at 1e3);
# a two-pass or Welford one errs by ~u_acc (|mean| / spread) sqrt(C) (its mean's rounding shifts every centred
# element alike), which the baseline, itself a two-pass layernorm summed one term after another, measures.
# Spread 1e-2 or 1: |x| stays ~1e3, within float16's range.
OFFSETS = st.sampled_from((1e2, 1e3))


@pytest.mark.property("XB-1")
@pytest.mark.parametrize("layer", hh.LAYERS)
@given(data=st.data())
def test_forward_offset_mean(subject, oracle, baseline, case, dtype, layer, prop, data):
    """Pre-LN layernorm stacks (and their final norm) on tokens with a large common mean (OFFSETS): the
    final norm, x_U and every write within the case's forward budget."""
    require_placement(subject, "pre")
    if "layernorm" not in subject.capabilities.norms:
        pytest.skip(f"{subject.name} does not claim norm layernorm")
    shape, cfg = data.draw(hh.structures(subject, case, "pre", "standard", depths=(1, 4), norms=("layernorm",),
                                         layer=layer), label="structure")
    if layer == "preset":
        cfg = hh.with_final_norm(subject, cfg)
    seed, scale, offset = (data.draw(s, label=n) for s, n in ((hh.seeds, "seed"), (RAW_STREAM_SCALES, "scale"),
                                                                (OFFSETS, "offset")))
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale, offset=offset)
    x = hh.offset_input(seed, shape, scale, offset, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)
    got, want, base = (b.stack_forward(cfg, params, x, dtype) for b in (subject, oracle, baseline))
    _forward_within_budget(prop, cfg, dtype, got, want, base)


@pytest.mark.property("XB-2")
@pytest.mark.parametrize("layer", AGREEMENT_LAYERS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@given(data=st.data())
def test_vjp_matches_oracle(subject, oracle, baseline, case, dtype, placement, layer, prop, data):
    """The input gradient and the gradient of every parameter of every block, each normwise within the
    case's gradient budget. ReZero's gate gradient is a dot product <g_l, F_l>, its error measured, like
    ID-3, against sum |g_l F_l| (budgets.py, 2.). A gradient whose reference lies below the dtype's normal
    range (a deep plain stack in float16) is outside the domain: not compared."""
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop, layer)
    vjp_within_budget(prop, cfg, params, x, g, dtype, *(b.stack_vjp(cfg, params, x, g, dtype)
                                                        for b in (subject, oracle, baseline)))


def vjp_within_budget(prop, cfg, params, x, g, dtype, got, want, base) -> None:
    """d x_0 and the gradient of every parameter of every layer, each normwise within the case's gradient
    budget; each error relative to the oracle's gradient, or to the scale of the sum it is (_error_scales).
    A gradient below the dtype's normal range (hh.resolvable), or one whose computation overflows the dtype in
    the baseline too (_beyond_range), is outside the domain: not compared."""
    kinks = budgets.kink_contributions(cfg, params, x, g, dtype)
    if hh.resolvable(want.dx, dtype) and not _beyond_range(got.dx, base.pick(lambda gr: gr.dx)):
        prop.within_budget("d x_0", got.dx, want.dx, base.pick(lambda gr: gr.dx), "gradient", dtype, cfg.n_updates,
                           scale=_with_kinks(None, want.dx, kinks.get("dx"), dtype, cfg))
    scales = _error_scales(cfg, params, x, g, want)
    for index, (gp, wp) in enumerate(zip(got.dparams, want.dparams, strict=True)):
        for (name, a), (_, b) in zip(gp.items(), wp.items(), strict=True):
            scale = _with_kinks(scales.get((index, name)), b, kinks.get((index, name)), dtype, cfg)
            if not hh.resolvable(b, dtype, scale) or _beyond_range(a, base.pick(_param(index, name))):
                continue
            prop.within_budget(f"d {name} in layer {index}", a, b, base.pick(_param(index, name)), "gradient",
                               prop.parameter_dtype(dtype), cfg.n_updates, scale=scale)


def _beyond_range(got: np.ndarray, base) -> bool:
    """A non-finite gradient where every baseline draw overflows too: an intermediate of the exact computation
    exceeds the dtype's range (seen: float16, a norm on a branch's tiny output amplifies the cotangent by up to
    1/sqrt(eps) = 316 per norm, 1.6e5 after two). The baseline runs only for a non-finite result."""
    return not np.all(np.isfinite(got)) and not any(np.all(np.isfinite(d)) for d in base())


def _with_kinks(scale, ref_value, contribution, dtype, cfg):
    """The scale raised by what the ReLU elements a correct rounding may flip contribute (budgets.py, 7.)."""
    if not contribution:
        return scale
    base = float(np.linalg.norm(ref_value)) if scale is None else scale
    return budgets.kink_scale(base, contribution, dtype, cfg.n_updates)


def _error_scales(cfg, params, x, g, want) -> dict[tuple[int, str], float]:
    """What a gradient's error is measured against where its own norm is no scale (budgets.py): ReZero's gate
    gradient <g_u, w_u>, a dot product of the cotangent on the update's output and its write, against
    sum |g_u w_u| (2.); the key bias, zero in exact arithmetic, and the other parameters only the keys'
    gradient reaches, against the scale of the residue they sum (6.)."""
    scales = {}
    if cfg.placement == "rezero":
        writes = ref.stack_forward(cfg, params, x).writes
        cotangents = ref.backward(cfg, params, x, g)[2]
        scales = {(index, f"{kinds[0]}.gate"): float(np.sum(np.abs(cotangents[u + 1] * writes[u]))) or 1.0
                  for u, (index, _, kinds) in enumerate(ref.layer_updates(cfg, params))}
    for (index, name), s in budgets.score_side_scales(cfg, params, x, g).items():
        scales[(index, name)] = max(s, float(np.linalg.norm(want.dparams[index][name])))
    return scales


# T = 256: several blocks of a blockwise (flash) attention kernel, whose softmax must rescale the earlier
# blocks. 32 x 256 = 8192 tokens for the mlp: a weight gradient summed over them in bfloat16 errs by
# ~sqrt(8192 / 6) u = 37 u, far outside its budget (budgets.py), where the few tokens of hh.SHAPES hide it.
LONG_SHAPES = {"attention": (2, 256, 16), "mlp": (32, 256, 16)}


def _seeded_case(data, backend, cfg, shape, dtype, prop):
    """A fixed structure the backend must claim, with seeded unit-scale x, cotangent and parameters."""
    require_config(backend, cfg)
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    return cfg, x, g, hh.params_for(backend, cfg, seed, dtype, perturb=True)


def _long_case(data, backend, dtype, branch, norm, prop):
    require_placement(backend, "pre")
    require_branch(backend, branch, norm)
    shape = LONG_SHAPES[branch]
    cfg = BlockConfig(placement="pre", norm=norm, branch=branch, d_model=shape[-1])
    return _seeded_case(data, backend, cfg, shape, dtype, prop)


@pytest.mark.property("XB-1")
@pytest.mark.parametrize("norm", ["rmsnorm"])
@profiles.heavy()
@given(data=st.data())
def test_long_sequence_forward(subject, oracle, baseline, dtype, norm, prop, data):
    """Causal attention over T = 256 tokens within the forward budget (a blockwise softmax that forgets
    to rescale the earlier blocks errs by the growth of the running maximum)."""
    cfg, x, _, params = _long_case(data, subject, dtype, "attention", norm, prop)
    got, want, base = (b.stack_forward(cfg, params, x, dtype) for b in (subject, oracle, baseline))
    prop.within_budget("the branch outputs over 256 tokens", got.writes, want.writes,
                       base.pick(lambda t: t.writes), "forward", dtype)


@pytest.mark.property("XB-2")
@pytest.mark.parametrize("branch,norm", [("attention", "rmsnorm"), ("mlp", "rmsnorm"), ("mlp", "layernorm")])
@profiles.heavy()
@given(data=st.data())
def test_long_sequence_vjp(subject, oracle, baseline, dtype, branch, norm, prop, data):
    """Every gradient over many tokens (LONG_SHAPES) within its budget: weight gradients are sums over
    all tokens, so an accumulation in a too narrow dtype shows here."""
    cfg, x, g, params = _long_case(data, subject, dtype, branch, norm, prop)
    vjp_within_budget(prop, cfg, params, x, g, dtype, *(b.stack_vjp(cfg, params, x, g, dtype)
                                                        for b in (subject, oracle, baseline)))


# Realistic widths, drawn where the structure is drawn (dev, nightly, calibrate; `ci` keeps its small set):
# C = 1024 with an odd Llama-style hidden width (8/3 C rounded up to 2731), and an odd model width 769 (a prime:
# no attention head count divides it, so an mlp block), over enough tokens for blockwise attention kernels.
REALISTIC = {"llama-1024": (preset("llama", d_model=1024, n_heads=8, n_kv_heads=2, d_ff=2731), (1, 256, 1024)),
             "mlp-769": (BlockConfig(branch="mlp", norm="rmsnorm", d_model=769, n_heads=1, mlp_ratio=3), (2, 128, 769))}


def _realistic_case(data, backend, dtype, name, prop):
    if not hh.STRUCTURE_PER_EXAMPLE:
        pytest.skip("realistic sizes run in the dev, nightly and calibrate profiles")
    cfg, shape = REALISTIC[name]
    return _seeded_case(data, backend, cfg, shape, dtype, prop)


@pytest.mark.property("XB-1")
@pytest.mark.parametrize("name", list(REALISTIC))
@profiles.heavy(0.01)
@given(data=st.data())
def test_realistic_forward(subject, oracle, baseline, dtype, name, prop, data):
    """Realistic widths (REALISTIC): every state and write within the forward budget."""
    cfg, x, _, params = _realistic_case(data, subject, dtype, name, prop)
    got, want, base = (b.stack_forward(cfg, params, x, dtype) for b in (subject, oracle, baseline))
    prop.within_budget("the states", got.states, want.states, base.pick(lambda t: t.states), "forward", dtype,
                       cfg.n_updates)
    prop.within_budget("the writes", got.writes, want.writes, base.pick(lambda t: t.writes), "forward", dtype,
                       cfg.n_updates)


@pytest.mark.property("XB-2")
@pytest.mark.parametrize("name", list(REALISTIC))
@profiles.heavy(0.01)
@given(data=st.data())
def test_realistic_vjp(subject, oracle, baseline, dtype, name, prop, data):
    """Realistic widths (REALISTIC): the input gradient and every parameter gradient within the gradient budget."""
    cfg, x, g, params = _realistic_case(data, subject, dtype, name, prop)
    vjp_within_budget(prop, cfg, params, x, g, dtype, *(b.stack_vjp(cfg, params, x, g, dtype)
                                                        for b in (subject, oracle, baseline)))


@pytest.mark.property("XB-4")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data())
def test_deterministic(subject, case, dtype, placement, layer, prop, data):
    """The same call twice gives bitwise the same states and the same gradients of x_0 and of every
    parameter (CPU): a weight gradient reduced over tokens in a racy or call-dependent order differs."""
    require_cpu(subject)
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop, layer)
    first, second = (subject.stack_forward(cfg, params, x, dtype) for _ in range(2))
    prop.bitwise_equal("states of two identical calls", second.states, first.states)
    first, second = (subject.stack_vjp(cfg, params, x, g, dtype) for _ in range(2))
    prop.bitwise_equal("d x_0 of two identical calls", second.dx, first.dx)
    for index, (a, b) in enumerate(zip(first.dparams, second.dparams, strict=True)):
        for (name, one), (_, two) in zip(a.items(), b.items(), strict=True):
            prop.bitwise_equal(f"d {name} in layer {index} of two identical calls (a racy or order-dependent "
                               f"reduction differs)", two, one)


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in other memory layouts: a strided slice and a transposed view."""
    padded = np.zeros(x.shape[:-1] + (2 * x.shape[-1],))
    padded[..., ::2] = x
    transposed = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    return {"strided": padded[..., ::2], "transposed view": transposed}


@pytest.mark.property("XB-5")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data())
def test_layout_does_not_matter(subject, oracle, baseline, case, dtype, placement, layer, prop, data):
    """Strided and transposed-view inputs give the same result as contiguous ones (a backend may pick
    another kernel for another layout, but not other values): the two differ by at most the sum of two
    legitimate errors, twice the case's forward budget."""
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop, layer)
    want = subject.stack_forward(cfg, params, x, dtype).output
    exact = oracle.stack_forward(cfg, params, x, dtype).output
    base = baseline.stack_forward(cfg, params, x, dtype).pick(lambda t: t.output)()
    allowed = 2 * budgets.budget("forward", dtype, baseline_error(base, exact), cfg.n_updates).allowed
    for layout, view in _layouts(x).items():
        assert not view.flags.c_contiguous and np.array_equal(view, x)
        got = subject.stack_forward(cfg, params, view, dtype).output
        prop.at_most(f"relative difference for a {layout} input", relative_error(got, want), allowed)

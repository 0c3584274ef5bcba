"""VG: the variance of the residual stream (theory and sampling bands in conformance/stream_theory.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import NARROW_DTYPES, round_to
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import BASE_STD, OUT_BIASES, draw_params, expected_std, role_of
from resconf.backends.presets import PRESETS, preset
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance import stream_theory as theory
from resconf.conformance.requirements import require_branch, require_config, require_placement
from resconf.conformance import budgets

STAT_SHAPE = (4, 32, 64)  # (B, T, C): n = 8192 elements per state, enough for 6-sigma bands to bite


@pytest.mark.property("VG-1")
@pytest.mark.parametrize("layer", hh.LAYERS)
@given(data=st.data())
def test_stream_is_sum_of_writes(subject, case, dtype, layer, prop, data):
    """x_U == x_0 + sum_u w_u for a pre stack, up to the rounding of U additions: |error| <= bound *
    sum of |terms| elementwise (recursive summation; budgets.py, 3.). U counts every sublayer's update."""
    require_placement(subject, "pre")
    shape, cfg = data.draw(hh.structures(subject, case, "pre", "standard", depths=hh.DEPTHS[:3], layer=layer),
                           label="structure")
    depth = cfg.n_updates
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(hh.scales, label="scale")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale)
    x = hh.normal_input(seed, shape, scale, dtype)
    trace = subject.stack_forward(cfg, hh.params_for(subject, cfg, seed, dtype, perturb=True), x, dtype)
    error = np.abs(trace.states[-1] - (trace.states[0] + trace.writes.sum(axis=0)))
    magnitude = np.abs(trace.states[0]) + np.abs(trace.writes).sum(axis=0)
    prop.at_most("max |x_L - (x_0 + sum F_l)| / sum |terms|", float(np.max(error / np.maximum(magnitude, 1e-300))),
                 budgets.summation_bound(dtype, depth))


def _seeds_example_params(cfg: BlockConfig, seed: int, dtype: str, write_var: float):
    """The suite's own linear branches, rescaled so each write has variance write_var: w_out std
    sqrt(write_var / C) (a unit-variance normalised input times C weights)."""
    scale = np.sqrt(write_var / cfg.d_model) / BASE_STD
    return tuple(p.map(lambda t: round_to(t, dtype)) for p in
                 (p.replace({"linear.w_out": p["linear.w_out"] * scale}) for p in draw_params(cfg, seed)))


@pytest.mark.property("VG-2")
def test_uncorrelated_growth(subject, dtype, prop):
    """The seeds' worked example: unit-variance embeddings, 192 sublayers each writing variance 0.01,
    so Var(x_L) ~= 1 + 192 * 0.01 = 2.92. Checked two ways within Z sigma of the sampling distribution
    over each layer's weights, given the stream it reads (write_bands): every layer's covariance of stream and
    write, and the final variance."""
    require_placement(subject, "pre")
    require_branch(subject, "linear", "layernorm")
    depth, write_var, seed = 192, 0.01, 192
    cfg = BlockConfig(placement="pre", norm="layernorm", branch="linear", depth=depth, d_model=STAT_SHAPE[-1])
    prop.example(cfg=cfg.describe(), shape=STAT_SHAPE, seed=seed)
    x = hh.normal_input(seed, STAT_SHAPE, 1.0, dtype)
    params = _seeds_example_params(cfg, seed, dtype, write_var)
    trace = subject.stack_forward(cfg, params, x, dtype)
    state_vars, write_vars, covs = theory.stream_variances(trace.states, trace.writes)
    n, C = x.size, cfg.d_model
    prop.curve("Var(x_l)", range(depth + 1), state_vars)
    prop.curve("theory 1 + 0.01 l", range(depth + 1), 1.0 + write_var * np.arange(depth + 1))
    bands, cov_sd = write_bands(cfg, params, trace.states[:-1], np.sqrt(write_var / C))
    prop.at_most("max_l |Cov(x_{l-1}, F_l)| in units of its sampling sd", float(np.max(np.abs(covs) / cov_sd)),
                 budgets.Z)
    expected = 1.0 + depth * write_var
    sd = np.sqrt(np.sum(4.0 * cov_sd**2 + bands[:, 1] ** 2) + 2.0 / n)  # + x_0's own sample variance
    prop.at_most(f"|Var(x_L) - {expected:.2f}| in sampling sds", abs(state_vars[-1] - expected) / sd, budgets.Z)


VG3_DEPTHS = (6, 12, 24, 48, 96)


def _zero_writes(p):
    """The layer with every output projection and its bias zero: it writes exactly nothing."""
    return p.replace({name: np.zeros_like(t) for name, t in p.items()
                      if role_of(name) == "out" or name.split(".")[1] in OUT_BIASES})


# The MLP variants whose write variance stream_theory computes (He et al. for ReLU; quadrature for the rest).
VG3_BRANCHES = {"linear": dict(branch="linear"), "mlp": dict(branch="mlp"),
                "relu": dict(branch="mlp", activation="relu"), "silu": dict(branch="mlp", activation="silu"),
                "swiglu": dict(branch="mlp", activation="silu", gated=True)}


def projection_inputs(cfg: BlockConfig, params, states: np.ndarray) -> list[np.ndarray]:
    """Per update, what its output projections multiply, from the oracle's maths given the state it reads: the
    normalised input (linear branch), the mlp's activations, attention's context; a parallel layer's sublayers
    side by side (their projections stack into one)."""
    return [np.concatenate([ref.PROJECTION_INPUT[k](cfg, p.sub(k), ref.input_norm(cfg, p.sub(cfg.norm_owner(k)), x))
                            for k in kinds], axis=-1)
            for (_, p, kinds), x in zip(ref.layer_updates(cfg, params), states)]


def write_bands(cfg: BlockConfig, params, states: np.ndarray, std_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Per update, ((E, sd) of its write's variance, sd of Cov(x, F)) over its output projections (entries of
    std `std_out`) given the state it reads (stream_theory.projection_write_band, covariance_sd)."""
    inputs = projection_inputs(cfg, params, states)
    bands = np.array([theory.projection_write_band(a, std_out, cfg.d_model) for a in inputs])
    cov_sd = np.array([theory.covariance_sd(a[None], x[None], std_out)[0] for a, x in zip(inputs, states)])
    return bands, cov_sd


def down_inputs(cfg: BlockConfig, params, states: np.ndarray) -> np.ndarray:
    """projection_inputs of a stack of single-sublayer layers, (L, B, T, C or H)."""
    return np.stack(projection_inputs(cfg, params, states))


def _check_init_std(prop, cfg: BlockConfig, params, where: str) -> None:
    """Each role's sample std against the scheme's (relative sd of a sample std over m values: 1/sqrt(2m))."""
    for role in ("weight", "out"):
        weights = [t for p in params for name, t in p.items() if role_of(name) == role]
        if weights:
            sample = np.concatenate([w.ravel() for w in weights])
            want = expected_std(cfg, role)
            prop.at_most(f"|std({role} projections) / scheme - 1| in sampling sds at {where}",
                         abs(sample.std() / want - 1.0) * np.sqrt(2.0 * sample.size), budgets.Z)


@pytest.mark.property("VG-3")
@pytest.mark.parametrize("branch", list(VG3_BRANCHES))
@pytest.mark.parametrize("init", ["gpt2", "standard"])
def test_gpt2_scaling(subject, dtype, branch, init, prop):
    """The L layers' writes add variance L * v(std_out): with `gpt2` init std_out = 0.02 / sqrt(L) for L
    one-sublayer layers, so the sum is v(0.02) whatever L (a band independent of depth); with `standard`
    it is linear in L. Tested on the sum of the realised write variances (its spread, 0.3-2.5 %, is the
    weight draw's; stream_theory.write_variance_spread), which sees a stack that writes half the variance
    from 12 to 170 sds out, and on the stream's growth Var(x_L) - Var(x_0), which adds the covariance terms'
    spread over each layer's output projection given the stream (stream_theory.covariance_sd). When the backend brings its own initializer, each tensor's sample std is checked
    against the scheme first. For a backend that compiles each depth (Backend.compiles_each_depth) every
    depth runs as a 96-block stack whose blocks past L write exactly zero, so it compiles one shape. Statistical, so kept to float64 and float32, where rounding
    noise is far below the sampling band."""
    if dtype in NARROW_DTYPES:
        pytest.skip("VG-3 is checked in float64 and float32 only")
    require_placement(subject, "pre")
    C, tokens = STAT_SHAPE[-1], STAT_SHAPE[0] * STAT_SHAPE[1]
    x = hh.normal_input(3, STAT_SHAPE, 1.0, dtype)
    for depth in VG3_DEPTHS:
        cfg = BlockConfig(placement="pre", norm="layernorm", init=init, depth=depth, d_model=C, **VG3_BRANCHES[branch])
        require_config(subject, cfg)
        prop.example(cfg=cfg.describe(), shape=STAT_SHAPE, seed=depth)
        params = hh.params_for(subject, cfg, depth, dtype)
        _check_init_std(prop, cfg, params, f"L={depth}")
        run = params
        if subject.compiles_each_depth:  # one program for every depth: the deepest stack, zero writes after L
            run += tuple(_zero_writes(params[-1]) for _ in range(VG3_DEPTHS[-1] - depth))
        trace = subject.stack_forward(dataclasses.replace(cfg, depth=len(run)), run, x, dtype)
        state_vars, write_vars, _ = theory.stream_variances(trace.states[:depth + 1], trace.writes[:depth])
        v = theory.sample_write_variance(cfg, BASE_STD, expected_std(cfg, "out"))
        anisotropy = theory.input_anisotropy(trace.states[:depth], cfg.eps)
        writes_sd = theory.write_sum_sd(cfg, BASE_STD, v, anisotropy, tokens)
        prop.at_most(f"|sum of write variances - L v| in sampling sds at L={depth}",
                     abs(write_vars.sum() - depth * v) / writes_sd, budgets.Z)
        growth = state_vars[-1] - state_vars[0]
        cov_sd = theory.covariance_sd(down_inputs(cfg, params, trace.states[:depth]), trace.states[:depth],
                                      expected_std(cfg, "out"))
        sd = np.sqrt(4.0 * np.sum(cov_sd**2) + writes_sd**2)
        prop.curve(f"{init} measured", [depth], [state_vars[-1] / state_vars[0]])
        prop.curve(f"{init} theory", [depth], [1.0 + depth * v / state_vars[0]])
        prop.at_most(f"|growth - L v| in sampling sds at L={depth}", abs(growth - depth * v) / sd, budgets.Z)


PRESET_DEPTH = 12


def _projection_presets(subject):
    """(name, cfg) of every layer preset the backend runs at placement=pre under gpt2 init whose writes are
    output projections (its writes' variance then follows the projection's draw). A norm on the branch's
    output (OLMo 2, Gemma 3) sets a write's variance to the norm's gain^2 whatever the weights, and a
    per-channel LayerScale multiplies each sublayer's write by its own gains: neither is a projection's band."""
    for name in PRESETS:
        cfg = preset(name, placement="pre", init="gpt2", depth=PRESET_DEPTH, d_model=STAT_SHAPE[-1])
        if subject.capabilities.supports(cfg) and not cfg.branch_norm and cfg.layer_scale is None:
            yield name, cfg


def _preset_trace(subject, prop, name: str, cfg: BlockConfig, dtype: str):
    """(params, trace, per-update (E, sd) of the write's variance, per-update sd of Cov(x, F)) for a preset,
    each band over the update's output projections given the stream (stream_theory.projection_write_band)."""
    prop.example(cfg=cfg.describe(), shape=STAT_SHAPE, seed=PRESET_DEPTH)
    params = hh.params_for(subject, cfg, PRESET_DEPTH, dtype)
    trace = subject.stack_forward(cfg, params, hh.normal_input(3, STAT_SHAPE, 1.0, dtype), dtype)
    bands, cov_sd = write_bands(cfg, params, trace.states[:-1], expected_std(cfg, "out") * cfg.branch_scale)
    return params, trace, bands, cov_sd


@pytest.mark.property("VG-2")
def test_uncorrelated_growth_on_presets(subject, dtype, prop):
    """The layers people ship, 12 layers under gpt2 init: each update's write is uncorrelated with the stream
    it reads (its covariance within Z sds of the draw of its output projections, given what they multiply),
    so the stream grows by the sum of the writes' expected variances. Attention writes are averages over
    the tokens each query sees (the causal prefix, or every token): the band takes them from the realised
    stream, so an attention that averages over the wrong tokens moves the growth off its band."""
    if dtype in NARROW_DTYPES:
        pytest.skip("VG-2 on the presets is checked in float64 and float32 only")
    ran = False
    for name, cfg in _projection_presets(subject):
        _, trace, bands, cov_sd = _preset_trace(subject, prop, name, cfg, dtype)
        state_vars, _, covs = theory.stream_variances(trace.states, trace.writes)
        prop.at_most(f"max_u |Cov(x_u, F_u)| in sampling sds, preset {name}", float(np.max(np.abs(covs) / cov_sd)),
                     budgets.Z)
        expected, sd = bands[:, 0].sum(), np.sqrt(np.sum(bands[:, 1] ** 2) + 4.0 * np.sum(cov_sd**2))
        prop.curve(f"{name} Var(x_u)", range(len(state_vars)), state_vars)
        theory_curve = state_vars[0] + np.concatenate([[0.0], np.cumsum(bands[:, 0])])
        prop.curve(f"{name} theory", range(len(state_vars)), theory_curve)
        prop.at_most(f"|Var(x_U) - Var(x_0) - sum of E[Var(F_u)]| in sampling sds, preset {name}",
                     abs(state_vars[-1] - state_vars[0] - expected) / sd, budgets.Z)
        ran = True
    if not ran:
        pytest.skip(f"{subject.name} runs no layer preset of projection writes at placement=pre")


@pytest.mark.property("VG-3")
def test_gpt2_init_on_presets(subject, dtype, prop):
    """The layers people ship under `gpt2` init: every weight and output projection of every preset the
    backend runs has the scheme's std (0.02; output projections 0.02 / sqrt(2 L) for two writes a layer),
    so an initializer that counts depth wrong is seen on the presets too, not only on one-sublayer blocks;
    and where the writes are projections, the sum of the realised write variances is the sum of their
    expectations over the projections' draw given what they multiply (attention's context carries the
    realised token means), within Z sds: half the write variance lands about 20 sds out."""
    if dtype in NARROW_DTYPES:
        pytest.skip("VG-3 is checked in float64 and float32 only")
    ran = False
    for name in PRESETS:
        cfg = preset(name, placement="pre", init="gpt2", depth=PRESET_DEPTH, d_model=STAT_SHAPE[-1])
        if subject.capabilities.supports(cfg):
            prop.example(cfg=cfg.describe(), seed=PRESET_DEPTH)
            _check_init_std(prop, cfg, hh.params_for(subject, cfg, PRESET_DEPTH, dtype), f"preset {name}, L=12")
            ran = True
    for name, cfg in _projection_presets(subject):
        _, trace, bands, _ = _preset_trace(subject, prop, name, cfg, dtype)
        _, write_vars, _ = theory.stream_variances(trace.states, trace.writes)
        prop.curve(f"{name} Var(F_u)", range(1, len(write_vars) + 1), write_vars)
        prop.curve(f"{name} E[Var(F_u)]", range(1, len(write_vars) + 1), bands[:, 0])
        prop.at_most(f"|sum of write variances - sum of E| in sampling sds, preset {name}",
                     abs(write_vars.sum() - bands[:, 0].sum()) / np.sqrt(np.sum(bands[:, 1] ** 2)), budgets.Z)
    if not ran:
        pytest.skip(f"{subject.name} runs no layer preset at placement=pre")


@pytest.mark.property("VG-4")
@pytest.mark.parametrize("layer", hh.LAYERS)
@given(data=st.data())
def test_post_normalises(subject, baseline, case, dtype, layer, prop, data):
    """Every state of a post stack (gain 1, bias 0) has per-token mean 0 and variance s2 / (s2 + eps),
    s2 the variance of that token's norm input x_{l-1} + F_l, which the trace holds. How far a correct
    backend's rounded output strays from both is measured on the baseline's own trace (budgets.py, 1.)."""
    require_placement(subject, "post")
    shape, cfg = data.draw(hh.structures(subject, case, "post", "standard", depths=hh.DEPTHS[:2], norms=("layernorm",),
                                         layer=layer), label="structure")
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(hh.scales, label="scale")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale)
    x = hh.normal_input(seed, shape, scale, dtype)
    params = hh.params_for(subject, cfg, seed, dtype)
    got = _normalisation_errors(subject.stack_forward(cfg, params, x, dtype), cfg.eps)
    draws = baseline.stack_forward(cfg, params, x, dtype).pick(lambda t: _normalisation_errors(t, cfg.eps))()
    for what, measured, base in zip(("max per-token |mean|", "max per-token |var - s2/(s2+eps)|"), got, zip(*draws)):
        b = budgets.budget("forward", dtype, float(np.sqrt(np.mean(np.square(base)))), reduction=cfg.d_model)
        prop.at_most(what, measured, b.allowed, str(b))


def _normalisation_errors(trace, eps: float) -> tuple[float, float]:
    """(max |mean|, max |var - s2/(s2+eps)|) over every token of every state after the first."""
    s2 = (trace.states[:-1] + trace.writes).var(axis=-1)  # (L, B, T)
    out = trace.states[1:]
    return float(np.max(np.abs(out.mean(axis=-1)))), float(np.max(np.abs(out.var(axis=-1) - s2 / (s2 + eps))))

"""GR: the gradient keeps the identity path.

GR-1 splits a block's VJP into the skip path and the oracle's branch path; GR-2 bounds the input
gradient of a stack by the theorem (1 - rho) ||g|| <= ||g + J^T g|| <= (1 + rho) ||g||, rho = ||J||_2;
GR-3 records ||grad x_0|| / ||g|| against depth, residual against plain on the same weights; GR-4 checks
a backend's float64 VJPs against central finite differences of its own forward (for the numpy backend
this guards the oracle itself).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import NARROW_DTYPES, smallest_normal, unit_roundoff
from resconf.backends.params import expected_std
from resconf.backends.presets import preset
from resconf.conformance import budgets, gradient_band
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance import profiles
from resconf.conformance import stream_theory
from resconf.conformance.recorder import baseline_error
from resconf.conformance.reference_cache import cached_call
from resconf.conformance.requirements import require_placement


@pytest.mark.property("GR-1")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement", ["pre", "rezero", "post"])
@given(data=st.data())
def test_gradient_decomposition(subject, baseline, case, dtype, placement, layer, prop, data):
    """Per sublayer, from the last to the first: pre/rezero g <- g + J_write^T g; post g <- J_N^T g +
    J_F^T J_N^T g (the skip passes the norm). One layer: a block, or a preset's sublayers in turn."""
    require_placement(subject, placement)
    shape, cfg = data.draw(hh.structures(subject, case, placement, "standard", layer=layer), label="structure")
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)
    dx = subject.stack_vjp(cfg, params, x, g, dtype).dx
    base = baseline.stack_vjp(cfg, params, x, g, dtype).pick(lambda grads: grads.dx)
    states = ref.stack_forward(cfg, params, x).states
    expected = g
    for u, (_, p, kinds) in reversed(list(enumerate(ref.layer_updates(cfg, params)))):
        s, xu = p.sub(kinds[0]), states[u]
        if placement == "post":
            g_norm = ref.norm_vjp(cfg, s, cfg.skip * xu + ref.write(cfg, kinds[0], s, xu), expected)[0]  # J_N^T g
            expected = cfg.skip * g_norm + ref.write_vjp(cfg, kinds[0], s, xu, g_norm)[0]  # skip + branch path
        else:
            expected = cfg.skip * expected + ref.residual_write_vjp(cfg, p, kinds, xu, expected)  # skip + branch
    prop.within_budget("the input VJP against skip + branch, sublayer by sublayer", dx, expected, base, "gradient",
                       dtype, cfg.n_updates)


def _spectral_norms(cfg: BlockConfig, params, x: np.ndarray) -> list[float]:
    """rho_u = ||J_u||_2 of each update's residual write, at the oracle's own trajectory."""
    states = ref.stack_forward(cfg, params, x).states
    return [float(np.linalg.norm(ref.branch_jacobian(cfg, p, kinds, s), 2))
            for (_, p, kinds), s in zip(ref.layer_updates(cfg, params), states)]


@pytest.mark.property("GR-2")
@pytest.mark.parametrize("layer", hh.LAYERS)
@profiles.heavy()
@given(data=st.data())
def test_gradient_bounds(subject, oracle, baseline, case, dtype, layer, prop, data):
    """Pre stack: prod(1 - rho_l) <= ||grad x_0|| / ||g|| <= prod(1 + rho_l); the plain stack on the same
    weights: ||grad x_0|| / ||g|| <= prod rho_l. Theorems, so the only slack is the dtype's gradient
    budget. A detached or dropped skip breaks the lower bound."""
    require_placement(subject, "pre", "plain")
    shape, cfg = data.draw(hh.structures(subject, case, "pre", "standard", shapes=hh.JACOBIAN_SHAPES,
                                         depths=(2, 4, 8), layer=layer), label="structure")
    depth = cfg.depth
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)
    rho = _spectral_norms(cfg, params, x)
    assume(max(rho) < 1.0)  # the lower bound is vacuous otherwise
    tol = _norm_budget(cfg, params, x, g, dtype, oracle, baseline)
    ratio = np.linalg.norm(subject.stack_vjp(cfg, params, x, g, dtype).dx) / np.linalg.norm(g)
    prop.at_least("||grad x_0|| / ||g|| against prod(1 - rho)", ratio, math.prod(1 - r for r in rho) * (1 - tol))
    prop.at_most("||grad x_0|| / ||g|| against prod(1 + rho)", ratio, math.prod(1 + r for r in rho) * (1 + tol))
    if cfg.parallel:
        return  # a parallel layer is pre-norm by construction: it has no plain counterpart on the same weights
    plain = dataclasses.replace(cfg, placement="plain")
    rho_plain = _spectral_norms(plain, params, x)
    ratio_plain = np.linalg.norm(subject.stack_vjp(plain, params, x, g, dtype).dx) / np.linalg.norm(g)
    prop.at_most("plain stack ||grad x_0|| / ||g|| against prod(rho)", ratio_plain,
                 math.prod(rho_plain) * (1 + _norm_budget(plain, params, x, g, dtype, oracle, baseline)))


def _norm_budget(cfg, params, x, g, dtype, oracle, baseline) -> float:
    """The relative error a correct backend may make in ||grad x_0||: at most its normwise error in
    grad x_0, so that comparison's gradient budget."""
    want = oracle.stack_vjp(cfg, params, x, g, dtype).dx
    base = baseline.stack_vjp(cfg, params, x, g, dtype).pick(lambda grads: grads.dx)()
    return budgets.budget("gradient", dtype, baseline_error(base, want), cfg.n_updates).allowed


SWEEP_DEPTHS = (1, 2, 4, 8, 16, 32, 64, 128)
SWEEP_SHAPE = (2, 8, 64)


def sweep_config() -> BlockConfig:
    """GR-3's residual stack at its full depth."""
    return BlockConfig(placement="pre", norm="layernorm", branch="linear", init="standard", depth=SWEEP_DEPTHS[-1],
                       d_model=SWEEP_SHAPE[-1])


def _at_depth(subject, cfg: BlockConfig, params, depth: int, identity):
    """(cfg, the blocks) that run the first `depth` blocks: those alone, or, for a backend that compiles each
    depth (Backend.compiles_each_depth), followed by identity blocks up to the full length, so that one
    compiled shape serves every depth (x_L and its gradient pass identity blocks bitwise unchanged)."""
    if subject.compiles_each_depth:
        return cfg, tuple(p if layer < depth else identity(p) for layer, p in enumerate(params))
    return dataclasses.replace(cfg, depth=depth), params[:depth]


@pytest.mark.property("GR-3")
def test_gradient_depth_sweep(subject, baseline, dtype, prop):
    """Records ||grad x_0|| / ||g|| for depth 1..128, residual (pre) against plain on the same weights
    (linear branch, so an identity block exists for both: w_out = 0 for pre, w_out = I for plain). The band:
    each point agrees with the oracle's curve within that point's gradient budget (points where the oracle's
    plain value is below the dtype's normal range are recorded, not compared), and the plain curve lies
    below the residual one from depth 2 on; and the residual curve keeps to theory (theory_gate). Kept to
    float64 and float32: the plain curve falls out of float16's range, and low-precision agreement is checked
    per block elsewhere."""
    if dtype in NARROW_DTYPES:
        pytest.skip("GR-3 records its curve in float64 and float32 only")
    require_placement(subject, "pre", "plain")
    shape, seed = SWEEP_SHAPE, 20261122
    cfg = sweep_config()
    plain = dataclasses.replace(cfg, placement="plain")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    params = hh.params_for(subject, cfg, seed, dtype)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    zero = lambda p: p.replace({"linear.w_out": np.zeros_like(p["linear.w_out"]),
                                "linear.b_out": np.zeros_like(p["linear.b_out"])})
    eye = lambda p: p.replace({"linear.w_out": np.eye(cfg.d_model), "linear.b_out": np.zeros_like(p["linear.b_out"])})
    tiny = smallest_normal(dtype)
    curves = {}
    for label, c, identity in (("residual", cfg, zero), ("plain", plain, eye)):
        ours, oracle, base = [], [], []
        for depth in SWEEP_DEPTHS:
            run, p = _at_depth(subject, c, params, depth, identity)
            ours.append(np.linalg.norm(subject.stack_vjp(run, p, x, g, dtype).dx) / np.linalg.norm(g))
            oracle.append(np.linalg.norm(ref.stack_vjp(run, p, x, g).dx) / np.linalg.norm(g))
            draws = baseline.stack_vjp(run, p, x, g, dtype)
            base.append(draws.pick(lambda grads: np.linalg.norm(grads.dx) / np.linalg.norm(g)))
        prop.curve(label, SWEEP_DEPTHS, ours)
        prop.curve(f"{label} (oracle)", SWEEP_DEPTHS, oracle)
        curves[label] = ours
        for depth, got, want, b in zip(SWEEP_DEPTHS, ours, oracle, base):
            if want > tiny / unit_roundoff(dtype):
                prop.within_budget(f"the {label} ratio at depth {depth} against the oracle's", np.array(got),
                                   np.array(want), b, "gradient", dtype, depth)
    for depth, res, pl in zip(SWEEP_DEPTHS[1:], curves["residual"][1:], curves["plain"][1:]):
        prop.at_least(f"residual over plain gradient ratio at depth {depth}", res / max(pl, 1e-300), 1.0)
    theory_gate(prop, cfg, params, x, g, curves["residual"])


def theory_gate(prop, cfg: BlockConfig, params, x: np.ndarray, g: np.ndarray, ratios) -> None:
    """The residual curve against theory: log(ratio^2) within Z sds of the pre-LN analogue of (1 + beta^2)^L,
    prod over layers of (1 + s^2 (C - 2) / sigma^2), banded over the output projections' draw given the
    oracle's stream and cotangents (stream_theory.gradient_ratio_band; Monte Carlo: tools/gr3_power.py)."""
    theory_curve = []
    for depth, ratio in zip(SWEEP_DEPTHS, ratios):
        c = dataclasses.replace(cfg, depth=depth)
        states = ref.stack_forward(c, params[:depth], x).states
        cotangents = np.stack(ref.backward(c, params[:depth], x, g)[2])
        mean, sd = stream_theory.gradient_ratio_band(states, cotangents, expected_std(c, "out"), c.eps)
        theory_curve.append(math.exp(mean / 2.0))
        prop.at_most(f"|log(ratio^2) - theory| in sampling sds at depth {depth}",
                     abs(2.0 * math.log(ratio) - mean) / sd, budgets.Z)
    prop.curve("residual (theory)", SWEEP_DEPTHS, theory_curve)


GR3_PRESETS = ("gpt2", "llama", "encoder")
GR3_PRESET_SHAPE = (2, 8, 32)  # C = 32: the band probes each attention's Jacobian (B * T * C VJPs) on the oracle
GR3_PRESET_DEPTH = 12


def gr3_preset(name: str) -> BlockConfig:
    return preset(name, placement="pre", init="gpt2", depth=GR3_PRESET_DEPTH, d_model=GR3_PRESET_SHAPE[-1])


@pytest.mark.property("GR-3")
def test_gradient_ratio_on_presets(subject, dtype, prop, references):
    """The layers people ship, 12 layers under gpt2 init: log(||grad x_0||^2 / ||g||^2) within Z sds of its
    expectation over every output projection's draw given the oracle's stream and cotangents
    (conformance/gradient_band.py; Monte Carlo: tools/gr3_power.py --presets). At this init the writes are
    small, so the expected growth is far inside one sd: the gate holds the gradient's spread around its
    expectation, and catches a gradient through the stack off by a few tenths of a percent."""
    if dtype in NARROW_DTYPES or (dtype == "float32" and "float64" in subject.capabilities.dtypes):
        pytest.skip("GR-3 on the presets is checked in float64 (float32 where a backend has no float64): the band "
                    "is statistical, and float32's rounding is far inside it")
    ran = False
    for seed, name in enumerate(GR3_PRESETS):
        cfg = gr3_preset(name)
        if not subject.capabilities.supports(cfg):
            continue
        prop.example(cfg=cfg.describe(), shape=GR3_PRESET_SHAPE, seed=seed)
        params = hh.params_for(subject, cfg, seed, dtype)
        x = hh.normal_input(seed, GR3_PRESET_SHAPE, 1.0, dtype)
        g = hh.normal_input(seed + 100, GR3_PRESET_SHAPE, 1.0, dtype)
        dx = subject.stack_vjp(cfg, params, x, g, dtype).dx
        mean, sd = cached_call(references, "theory", "gradient_band.stack_band",
                               lambda: gradient_band.stack_band(cfg, params, x, g), (cfg, params, x, g), {})
        measured = math.log(float(np.sum(np.square(dx, dtype=np.float64)) / np.sum(np.square(g, dtype=np.float64))))
        prop.at_most(f"|log(ratio^2) - theory| in sampling sds, preset {name}", abs(measured - mean) / sd, budgets.Z)
        ran = True
    if not ran:
        pytest.skip(f"{subject.name} runs none of the presets {GR3_PRESETS} at placement=pre")


@pytest.mark.property("GR-4")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement", ["pre", "post", "rezero", "deepnorm", "plain"])
@given(data=st.data())
def test_vjp_finite_differences(subject, case, dtype, placement, layer, prop, data):
    """<g, J v> by fourth-order central differences of the backend's own forward against <VJP(g), v>,
    relative error <= 1e-6 (ref.FD_REL_TOL) plus the stencil's rounding noise. float64 only: in a
    narrower dtype the differences drown in rounding."""
    if dtype != "float64":
        pytest.skip("finite differences need float64")
    require_placement(subject, placement)
    shape, cfg = data.draw(hh.structures(subject, case, placement, "standard", depths=(2,), layer=layer),
                           label="structure")
    if layer == "preset" and placement == "pre":
        cfg = hh.with_final_norm(subject, cfg)
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)
    forward = lambda z: subject.stack_forward(cfg, params, z, dtype).output
    check = ref.fd_directional_check(forward, x, g, subject.stack_vjp(cfg, params, x, g, dtype).dx, seed,
                                     ref.fd_step(cfg))
    slack = ref.FD_REL_TOL * max(abs(check.fd), abs(check.vjp)) + check.noise
    prop.at_most(f"|FD - VJP| along a random direction ({check})", abs(check.fd - check.vjp), slack)

"""The theory behind VG-2/VG-3 and GR-3's gate (conformance/stream_theory.py) against closed forms and sampling."""
from __future__ import annotations

import numpy as np
import pytest

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.config import BlockConfig
from resconf.backends.params import BASE_STD, draw_params, expected_std, role_of
from resconf.conformance import stream_theory as theory
from resconf.conformance.budgets import Z
from resconf.conformance.test_gradient import SWEEP_SHAPE, sweep_config


def test_relu_second_moment_is_half_the_variance():
    """He et al. (2015): E[relu(z)^2] = Var(z) / 2. Quadrature meets the kink at 0, hence 1e-3."""
    for variance in (0.01, 1.0, 7.0):
        got = theory.second_moment(variance, BlockConfig(activation="relu"))
        assert got == pytest.approx(variance / 2, rel=1e-3)


@pytest.mark.parametrize("fields", [dict(activation="gelu", gelu="tanh"), dict(activation="gelu", gelu="exact"),
                                    dict(activation="silu")])
def test_second_moment_against_sampling(fields):
    """Within 5 sampling sds of a 10^6-sample mean."""
    cfg = BlockConfig(**fields)
    z = np.random.default_rng(0).normal(0.0, 1.3, 10**6)
    values = theory.activation(z, cfg) ** 2
    assert abs(theory.second_moment(1.3**2, cfg) - values.mean()) < 5 * values.std() / np.sqrt(z.size)


@pytest.mark.parametrize("fields", [dict(branch="linear"), dict(branch="mlp"), dict(branch="mlp", activation="relu"),
                                    dict(branch="mlp", activation="silu", gated=True)])
def test_write_variance_against_the_oracle(fields):
    """The oracle's writes on unit-variance normalised tokens, averaged over 20 weight draws, within 5 sds."""
    cfg = BlockConfig(d_model=64, **fields)
    x = np.random.default_rng(1).normal(size=(4, 64, 64))
    samples = []
    for seed in range(20):
        (p,) = draw_params(cfg, seed)
        s = p.sub(cfg.branch)
        samples.append(ref.write(cfg, cfg.branch, s, ref.norm(cfg, s, x)).var())
    want = theory.write_variance(cfg, BASE_STD, BASE_STD)
    assert abs(np.mean(samples) - want) < 5 * np.std(samples) / np.sqrt(len(samples))


def test_write_variance_refuses_what_it_does_not_model():
    with pytest.raises(ValueError, match="single linear or mlp"):
        theory.write_variance(BlockConfig(sublayers=("attention", "mlp")), BASE_STD, BASE_STD)


def _write_sum_z(cfg: BlockConfig, scale_out: float, seed: int = 0) -> float:
    """VG-3's statistic on the oracle: (sum of realised write variances - L v) / its model sd."""
    params = tuple(p.replace({n: t * scale_out for n, t in p.items() if role_of(n) == "out"})
                   for p in draw_params(cfg, seed))
    x = np.random.default_rng(seed + 1).normal(size=(4, 32, 64))
    trace = ref.stack_forward(cfg, params, x)
    _, write_vars, _ = theory.stream_variances(trace.states, trace.writes)
    v = theory.sample_write_variance(cfg, BASE_STD, expected_std(cfg, "out"))
    sd = theory.write_sum_sd(cfg, BASE_STD, v, theory.input_anisotropy(trace.states[:-1], cfg.eps), 4 * 32)
    return (write_vars.sum() - cfg.depth * v) / sd


@pytest.mark.parametrize("fields", [dict(branch="linear"), dict(branch="mlp", activation="relu"),
                                    dict(branch="mlp", activation="silu", gated=True)])
def test_write_sum_sees_half_the_write_variance(fields):
    """At the shallowest depth VG-3 tests, a correct stack sits within Z = 6 model sds and one whose output
    projections carry half the variance lies beyond 2 Z (the table in docs/spec.md has the Monte Carlo)."""
    cfg = BlockConfig(placement="pre", init="gpt2", depth=6, d_model=64, **fields)
    assert abs(_write_sum_z(cfg, 1.0)) < 6.0
    assert _write_sum_z(cfg, np.sqrt(0.5)) < -12.0


def test_isotropic_tokens_have_anisotropy_one():
    """x_0's tokens, drawn isotropic, give the factor 1 within its sampling noise; tokens that share one
    direction give far more."""
    x = np.random.default_rng(0).normal(size=(3, 128, 64))
    assert np.all(np.abs(theory.input_anisotropy(x, 1e-5) - 1.0) < 0.05)
    shared = x + 3.0 * np.random.default_rng(1).normal(size=(1, 1, 64))
    assert np.all(theory.input_anisotropy(shared, 1e-5) > 1.5)


def test_projection_write_band_against_the_draw_of_the_projection():
    """E and sd of a write's sample variance over 20,000 draws of its output projection W, for fixed inputs
    whose mean is far from 0 (so the terms for the write's own mean matter: they move E by 17 % and the sd by
    more). The sample mean sits within 5 standard errors of E; the sample sd within 5 of its own standard
    errors of sd (a sample variance's relative standard error is sqrt((kurtosis - 1) / N), kurtosis measured)."""
    rng = np.random.default_rng(7)
    a, std, C, draws = rng.normal(size=(50, 4)) + 1.0, 0.3, 3, 20_000
    expected, sd = theory.projection_write_band(a, std, C)
    w = rng.normal(0.0, std, size=(draws, 4, C))
    f = np.einsum("th,nhc->ntc", a, w).reshape(draws, -1)
    v = f.var(axis=1)
    assert abs(v.mean() - expected) < 5.0 * v.std() / np.sqrt(draws)
    kurtosis = np.mean((v - v.mean()) ** 4) / v.var() ** 2
    assert abs(v.var() / sd**2 - 1.0) < 5.0 * np.sqrt((kurtosis - 1.0) / draws)
    no_mean_terms = std**2 * np.trace(a.T @ a / len(a))
    assert abs(v.mean() - no_mean_terms) > 5.0 * v.std() / np.sqrt(draws)  # the test can tell them apart
    sd_no_mean_terms = std**2 * np.sqrt(2.0 * np.sum((a.T @ a / len(a)) ** 2) / C)
    assert abs(v.var() / sd_no_mean_terms**2 - 1.0) > 5.0 * np.sqrt((kurtosis - 1.0) / draws)


def test_gradient_ratio_band_holds_the_oracle_and_refuses_a_dropped_branch_gradient():
    """GR-3's theory gate on the oracle at depth 128 (three seeds: within Z sds), and on a backward that drops
    every branch's gradient (grad x_0 = g, ratio 1, against theory's ~4.4): far outside."""
    import dataclasses
    cfg = sweep_config()
    for seed in range(3):
        params = draw_params(cfg, seed)
        rng = np.random.default_rng(seed)
        x, g = rng.normal(size=SWEEP_SHAPE), rng.normal(size=SWEEP_SHAPE)
        states = ref.stack_forward(cfg, params, x).states
        dx, _, cotangents = ref.backward(cfg, params, x, g)
        mean, sd = theory.gradient_ratio_band(states, np.stack(cotangents), expected_std(cfg, "out"), cfg.eps)
        assert abs(np.log(np.sum(dx * dx) / np.sum(g * g)) - mean) / sd <= Z
        assert abs(0.0 - mean) / sd > 2 * Z  # log(1): the skip's gradient alone


def test_the_presets_gradient_band_is_the_closed_form_on_linear_branches():
    """gradient_band's route (each update's Jacobian from the oracle's VJPs, then projection_step) gives the
    linear stack's closed form (linear_steps) layer by layer: the same expected step e to 1e-9, and the same
    variance v to a few percent (the closed form takes the quadratic term's P_t^2 as rank C - 2; the Jacobian
    route estimates that term with fixed Gaussian probes)."""
    import dataclasses
    from resconf.conformance.gradient_band import stack_steps
    cfg = dataclasses.replace(sweep_config(), depth=8)
    params = draw_params(cfg, 3)
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=SWEEP_SHAPE), rng.normal(size=SWEEP_SHAPE)
    states = ref.stack_forward(cfg, params, x).states
    cotangents = np.stack(ref.backward(cfg, params, x, g)[2])
    closed = np.array(theory.linear_steps(states, cotangents, expected_std(cfg, "out"), cfg.eps))
    probed = np.array(stack_steps(cfg, params, x, g))
    np.testing.assert_allclose(probed[:, 0], closed[:, 0], rtol=1e-9)
    np.testing.assert_allclose(probed[:, 1], closed[:, 1], rtol=0.05)

"""Theory of the residual stream's variance at init, and the sampling error of measuring it.

Pre-LN stream: x_l = x_{l-1} + F_l(N(x_{l-1})). Expanding a sample variance,
    Var(x_l) = Var(x_{l-1}) + Var(F_l) + 2 Cov(x_{l-1}, F_l),
and at init with zero-mean weights E[Cov] = 0, so Var(x_L) ~= Var(x_0) + sum_l Var(F_l) (VG-2, VG-3).

Sampling distribution of the measured quantities (n = B*T*C elements, C features):
- the sample correlation r_l = Cov / sqrt(Var(x) Var(F)) has two independent sources of spread:
  the n sampled elements, sd 1/sqrt(n) (the usual null sd of a correlation), and the one weight draw of
  the block, which correlates F with x through tr(W)-like terms: for F = N(x) W, Cov = tr(W) / C with
  tr(W) ~ N(0, C s^2), against sqrt(Var(x) Var(F)) = s sqrt(C), so sd 1/C. Hence
      sd(r_l) = sqrt(1/n + 1/C^2).
- a realised write variance Var(F_l) = v * chi^2_{C^2} / C^2 (one output weight per (in, out) pair)
  spreads by sqrt(2)/C relative, and its estimate over n elements by sqrt(2/n) relative.
These add in quadrature over layers (independent weight draws). The model ignores that every layer
sees the same sampled tokens; checked against 30-seed Monte Carlo runs of the oracle (pre, layernorm,
L = 12 and 96, linear and mlp, gpt2 and standard), the true sd of the growth is 0.8x to 1.4x the model's
and the largest |z| was 3.1, so a bound of Z = 6 model sds (conformance/budgets.Z) still sits above 4
true sds.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from resconf.backends.config import BlockConfig


def activation(z: np.ndarray, cfg: BlockConfig) -> np.ndarray:
    """The mlp's activation, written out independently of the oracle."""
    if cfg.activation == "relu":
        return np.maximum(z, 0.0)
    if cfg.activation == "silu":
        return z / (1.0 + np.exp(-z))
    if cfg.gelu == "tanh":
        return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


def second_moment(variance: float, cfg: BlockConfig, nodes: int = 80) -> float:
    """E[act(z)^2] for z ~ N(0, variance), by Gauss-Hermite quadrature (probabilists' weight). For ReLU the
    closed form is variance / 2 (He et al. 2015); the quadrature agrees to 1e-3 relative (its kink), which
    tests/test_stream_theory.py checks."""
    x, w = hermegauss(nodes)
    return float(np.sum(w * activation(math.sqrt(variance) * x, cfg) ** 2) / math.sqrt(2.0 * math.pi))


def write_variance(cfg: BlockConfig, std_in: float, std_out: float) -> float:
    """Var(w(N(x))) per element for zero biases, unit norm gain, and a unit-variance normalised input:
    linear: C s_out^2; mlp: H s_out^2 E[act(z)^2] with z ~ N(0, C s_in^2); gated mlp: H s_out^2 E[act(z)^2]
    E[u^2], u ~ N(0, C s_in^2) the independent up projection."""
    if cfg.sublayers != (cfg.branch,) or cfg.layer_scale is not None or cfg.branch_scale != 1.0:
        raise ValueError(f"write_variance covers single linear or mlp sublayers, not {cfg.describe()}")
    if cfg.branch == "linear":
        return cfg.d_model * std_out**2
    if cfg.branch == "mlp":
        z_var = cfg.d_model * std_in**2
        moment = second_moment(z_var, cfg) * (z_var if cfg.gated else 1.0)
        return cfg.d_hidden * std_out**2 * moment
    raise ValueError(f"no closed-form write variance for branch {cfg.branch!r}")


def correlation_sd(n: int, d_model: int) -> float:
    return math.sqrt(1.0 / n + 1.0 / d_model**2)


def growth_sd(state_vars: np.ndarray, write_vars: np.ndarray, n: int, d_model: int) -> float:
    """sd of Var(x_L) - Var(x_0) around sum_l E[Var(F_l)]: covariance terms 2 r_l sqrt(Var x Var F) plus
    the spread of each realised and estimated write variance (see the module docstring)."""
    r = correlation_sd(n, d_model)
    cov = 4.0 * r**2 * np.sum(state_vars * write_vars)
    writes = np.sum(write_vars**2) * (2.0 / d_model**2 + 2.0 / n)
    return math.sqrt(cov + writes)


def stream_variances(states: np.ndarray, branches: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Var(x_l) for l = 0..L, Var(F_l), Cov(x_{l-1}, F_l)) over all elements of each state."""
    flat_x = states.reshape(states.shape[0], -1)
    flat_f = branches.reshape(branches.shape[0], -1)
    x_prev = flat_x[:-1] - flat_x[:-1].mean(axis=1, keepdims=True)
    f = flat_f - flat_f.mean(axis=1, keepdims=True)
    return flat_x.var(axis=1), flat_f.var(axis=1), np.mean(x_prev * f, axis=1)

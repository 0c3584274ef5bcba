"""XB-6: a low-precision stack's rounding error grows with depth as independent rounding predicts.

A pre stack of DEPTH layers (a linear or mlp block, else a layer preset) runs once in the backend; the oracle
reruns each update on the backend's own input state, so update u's local error lambda_u = x^_u - f_u(x^_{u-1})
is what its rounding added (a correct backend's propagation of earlier errors through J_u drops out).
Independent, zero-mean roundings add in quadrature, ||sum_u lambda_u||^2 ~= sum_u ||lambda_u||^2, so the
accumulated error grows as sqrt(U); a rounding biased alike at every update adds up linearly, to U times that.
coherence() is the ratio of the two and its sd under independence, for two fields (docs/spec.md, XB-6):
  - the stream's local errors, elementwise (truncation instead of round-to-nearest: each add loses
    ~ulp/2 towards 0, with the sign of x, which holds from update to update);
  - each write's relative scale error eps_u = <lambda_u, w_u> / ||w_u||^2 per token (an inverse RMS rounded
    to bfloat16 scales every write of a token by the same 1 + delta_t as long as it stays in one bfloat16
    interval).
Each write's RMS is WRITE_ULPS ulps of the stream's, so every add moves the stream by many ulps and a correct
rounding's residues are independent from update to update. In float32 the writes are then 7.6e-6 of the
stream, whose inverse RMS moves by far less than a bfloat16 ulp over the whole stack; in float16 and bfloat16
they are 6 % and 50 % of it, and a bfloat16 inverse RMS hides in the dtype's own rounding (the power table).
Monte Carlo: tools/xb6_power.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.config import BlockConfig
from resconf.backends.presets import PRESETS, preset
from resconf.backends.dtypes import round_to, unit_roundoff
from resconf.backends.params import draw_params
from resconf.conformance import budgets
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.requirements import require_placement

DEPTH, SHAPE, SEED = 64, (4, 16, 64), 20261207
WRITE_ULPS = 64  # each write's RMS in ulps (2u) of the stream's


def growth_config(backend) -> BlockConfig | None:
    """The stack XB-6 runs on `backend`: a pre block of the first norm (rmsnorm, layernorm) and branch (linear,
    mlp) it claims, else the first layer preset it runs whose writes scale with their output projections (not
    a branch_norm one, which normalises them); None when it runs none of them."""
    blocks = [BlockConfig(placement="pre", norm=n, branch=b, depth=DEPTH, d_model=SHAPE[-1])
              for n in ("rmsnorm", "layernorm") for b in ("linear", "mlp")]
    layers = [preset(name, placement="pre", depth=DEPTH, d_model=SHAPE[-1]) for name in PRESETS]
    return next((c for c in blocks + [c for c in layers if not c.branch_norm] if backend.capabilities.supports(c)),
                None)


def growth_case(cfg: BlockConfig, seed: int, dtype: str):
    """(params, x): unit-normal x and the suite's parameters (perturbed gains and biases), each update's output
    projections and their biases scaled so that its write at x_0 has an RMS of WRITE_ULPS ulps (2u) of x's."""
    x = hh.normal_input(seed, SHAPE, 1.0, dtype)
    target = WRITE_ULPS * 2 * unit_roundoff(dtype) * _rms(x)
    params = []
    for p in draw_params(cfg, seed, perturb=True):
        for kinds in cfg.updates:
            scale = target / _rms(ref.update_forward(cfg, p, kinds, x)[1])
            names = [f"{k}.{n}" for k in kinds for n in ref.OUTPUT_PROJECTION[k] if f"{k}.{n}" in p]
            p = p.replace({n: p[n] * scale for n in names})
        params.append(p.map(lambda t: round_to(t, dtype)))
    return tuple(params), x


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def local_errors(cfg: BlockConfig, params, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lambda, w), each (U, B, T, C): each update's local error x^_u - f_u(x^_{u-1}) and the oracle's write
    f_u(x^_{u-1}) - x^_{u-1}, both at the backend's own states."""
    exact = np.stack([ref.update_forward(cfg, p, kinds, x)[0]
                      for (_, p, kinds), x in zip(ref.layer_updates(cfg, params), states[:-1])])
    return states[1:] - exact, exact - states[:-1]


def coherence(v: np.ndarray) -> tuple[float, float]:
    """(rho, sd) for per-update errors v (U, n): rho = ||sum_u v_u||^2 / sum_u ||v_u||^2, 1 in expectation for
    independent zero-mean v_u, up to U for identical ones; sd its standard deviation under independence,
    2 sqrt(sum_{u<v} sum_i v_ui^2 v_vi^2) / sum_u ||v_u||^2 (the cross terms' variance, given the sizes)."""
    squares = v**2
    total = float(np.sum(squares))
    if total == 0.0:
        return 1.0, 1.0  # no error at all (the oracle itself): nothing grows
    cross = float(np.sum(squares[1:] * np.cumsum(squares, axis=0)[:-1]))
    return float(np.sum(v.sum(axis=0) ** 2)) / total, 2.0 * math.sqrt(cross) / total


def write_errors(lam: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(U, B*T): each write's relative scale error per token, <lambda, w> / ||w||^2."""
    return (np.sum(lam * w, axis=-1) / np.sum(w * w, axis=-1)).reshape(len(w), -1)


def growth_exponent(errors) -> float:
    """The least-squares slope of log ||e_k|| against log k: 1/2 for independent rounding, 1 for coherent."""
    k = np.arange(1, len(errors) + 1)
    return float(np.polyfit(np.log(k), np.log(np.maximum(errors, 1e-300)), 1)[0])


def _accumulated(v: np.ndarray) -> np.ndarray:
    """||sum_{u <= k} v_u|| for every k: the error accumulated over the first k updates."""
    return np.linalg.norm(np.cumsum(v.reshape(len(v), -1), axis=0), axis=1)


@pytest.mark.property("XB-6")
def test_error_growth(subject, dtype, prop):
    """Both fields' coherence: (rho - 1) / sd <= Z (a rho below 1, errors that cancel, is fine). Recorded against
    the update count: the accumulated local error, its independent-rounding prediction sqrt(sum_u ||lambda_u||^2),
    the stack's end-to-end error against the oracle, the writes' accumulated scale error, and the fitted
    growth exponents of the first and third (1/2 for independent rounding while the stream keeps its size)."""
    if dtype == "float64":
        pytest.skip("XB-6 is about low-precision roundings (bfloat16, float16, float32)")
    require_placement(subject, "pre")
    cfg = growth_config(subject)
    if cfg is None:
        pytest.skip(f"{subject.name} runs no pre stack of a linear or mlp block or of a layer preset whose writes "
                    f"scale with their output projections")
    prop.example(cfg=cfg.describe(), shape=SHAPE, seed=SEED, write_ulps=WRITE_ULPS)
    params, x = growth_case(cfg, SEED, dtype)
    states = subject.stack_forward(cfg, params, x, dtype).states
    lam, w = local_errors(cfg, params, states)
    fields = {"stream": lam.reshape(len(lam), -1), "write": write_errors(lam, w)}
    exact = ref.stack_forward(cfg, params, x).states
    curves = {"stream error": _accumulated(lam), "end-to-end error": _accumulated(np.diff(states - exact, axis=0)),
              "stream error (independent-rounding theory)": np.sqrt(np.cumsum(np.sum(fields["stream"] ** 2, axis=1))),
              "write error": _accumulated(fields["write"])}
    updates = range(1, len(lam) + 1)
    for label, ys in curves.items():
        prop.curve(label, updates, ys)
    for label in ("stream error", "end-to-end error"):
        prop.curve(f"{label} growth exponent", [len(lam)], [growth_exponent(curves[label])])
    for field, what in (("stream", "the stream's local errors"), ("write", "the writes' scale errors")):
        rho, sd = coherence(fields[field])
        prop.at_most(f"coherence of {what} over {len(lam)} updates, (rho - 1) / sd with rho = {rho:.3g}, "
                     f"sd = {sd:.2g} (1: independent rounding, {len(lam)}: the same rounding at every update)",
                     (rho - 1.0) / sd, budgets.Z)

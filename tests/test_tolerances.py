"""The tolerance table is calibrated, not guessed: correct backends stay well inside it across many
seeds, and it is tight enough that a skip scaled by (1 + 2^-10) falls outside it in float32/float64."""
from __future__ import annotations

import numpy as np
import pytest

from resconf.backends.config import DTYPES, BlockConfig
from resconf.backends.dtypes import round_to, unit_roundoff
from resconf.backends.params import draw_params
from resconf.backends.registry import installed_builtins, load_backend
from resconf.conformance.recorder import relative_error
from resconf.conformance.tolerances import tolerance

MARGIN = 2.0  # a correct backend's worst error must stay below tolerance / MARGIN
SEEDS = range(12)
DEPTH = 4
STRUCTURES = [BlockConfig(placement="pre", norm="layernorm", branch="mlp", depth=DEPTH, d_model=32),
              BlockConfig(placement="post", norm="rmsnorm", branch="attention", depth=DEPTH, d_model=32)]


def _case(cfg: BlockConfig, seed: int, dtype: str):
    rng = np.random.default_rng(seed)
    x, g = (round_to(rng.standard_normal((2, 8, cfg.d_model)), dtype) for _ in range(2))
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed, perturb=True))
    return x, g, params


def _worst_errors(backend, dtype: str) -> tuple[float, float]:
    oracle = load_backend("numpy")
    worst_fwd = worst_grad = 0.0
    for cfg in STRUCTURES:
        for seed in SEEDS:
            x, g, params = _case(cfg, seed, dtype)
            got = backend.stack_forward(cfg, params, x, dtype).states[-1]
            worst_fwd = max(worst_fwd, relative_error(got, oracle.stack_forward(cfg, params, x, dtype).states[-1]))
            got_g, want_g = backend.stack_vjp(cfg, params, x, g, dtype), oracle.stack_vjp(cfg, params, x, g, dtype)
            worst_grad = max(worst_grad, relative_error(got_g.dx, want_g.dx))
            for gp, wp in zip(got_g.dparams, want_g.dparams):
                for (_, a), (_, b) in zip(gp.items(), wp.items()):
                    worst_grad = max(worst_grad, relative_error(a, b))
    return worst_fwd, worst_grad


@pytest.mark.parametrize("name", [n for n in ("torch", "jax") if n in installed_builtins()])
@pytest.mark.parametrize("dtype", DTYPES)
def test_correct_backends_sit_well_inside_the_table(name, dtype):
    tol = tolerance(dtype, DEPTH)
    worst_fwd, worst_grad = _worst_errors(load_backend(name), dtype)
    u = unit_roundoff(dtype)
    assert worst_fwd <= tol.forward / MARGIN, f"{name} {dtype}: forward error {worst_fwd / u:.1f} u vs {tol.forward / u:.1f} u"
    assert worst_grad <= tol.gradient / MARGIN, f"{name} {dtype}: gradient error {worst_grad / u:.1f} u vs {tol.gradient / u:.1f} u"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_skip_scaled_by_one_plus_2_to_the_minus_10_is_outside_the_table(dtype):
    """y = (1 + 2^-10) x + F instead of x + F: relative error ~ 2^-10 ||x|| / ||y|| ~ 1e-3 per block."""
    cfg = STRUCTURES[0]
    x, _, params = _case(cfg, 0, dtype)
    y = load_backend("numpy").stack_forward(cfg, params[:1], x, dtype).states[-1]
    assert relative_error(y + 2.0**-10 * x, y) > tolerance(dtype).forward

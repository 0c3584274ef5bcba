"""The variance theory behind VG-2/VG-3 (conformance/stream_theory.py) against closed forms and sampling."""
from __future__ import annotations

import numpy as np
import pytest

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.config import BlockConfig
from resconf.backends.params import BASE_STD, draw_params
from resconf.conformance import stream_theory as theory


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

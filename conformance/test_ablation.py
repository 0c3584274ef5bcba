"""VG-5: deleting a layer from a pre stack changes its output by about that layer's write, ||F_k|| / ||x_L||
relative (the seeds' claim: residual networks behave like ensembles of shallow paths); from a plain stack,
by O(1). The theory and its band are conformance/stream_theory.ablation_ratio."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import NARROW_DTYPES
from resconf.backends.params import expected_std
from resconf.conformance import budgets
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance import stream_theory as theory
from resconf.conformance.requirements import require_config
from resconf.conformance.test_variance import STAT_SHAPE

DEPTH = 12
DELETED = (0, DEPTH // 2)  # the first and a middle layer (deleting the last removes exactly its write)
# A plain stack of gpt2-init linear branches scales the stream by ~s sqrt(C) = 0.046 a layer, so deleting one
# multiplies its output by ~1 / 0.046: a relative change near 20. A floor of 1/2 is one no skip can stay above: with one, the change is ~||F_k|| / ||x_L||, below 0.1.
PLAIN_FLOOR = 0.5


@pytest.mark.property("VG-5")
@pytest.mark.parametrize("placement", ["pre", "plain"])
def test_layer_ablation(subject, dtype, placement, prop):
    """pre: ||x_L - x_L without layer k||^2 / ||F_k||^2 within Z sds of prod_{l>k} (1 + s^2 (C-2) / sigma_l^2);
    plain (the control): ||x_L - x_L without layer k|| / ||x_L|| at least 1/2. gpt2 init, linear branches,
    layernorm; statistical, so float64 and float32 only."""
    if dtype in NARROW_DTYPES:
        pytest.skip("VG-5 is checked in float64 and float32 only")
    cfg = BlockConfig(placement=placement, norm="layernorm", branch="linear", init="gpt2", depth=DEPTH,
                      d_model=STAT_SHAPE[-1])
    require_config(subject, cfg)
    prop.example(cfg=cfg.describe(), shape=STAT_SHAPE, seed=DEPTH)
    x = hh.normal_input(DEPTH, STAT_SHAPE, 1.0, dtype)
    params = hh.params_for(subject, cfg, DEPTH, dtype)
    full = subject.stack_forward(cfg, params, x, dtype)
    shorter = dataclasses.replace(cfg, depth=DEPTH - 1)
    for k in DELETED:
        ablated = subject.stack_forward(shorter, params[:k] + params[k + 1:], x, dtype)
        change = float(np.linalg.norm(full.states[-1] - ablated.states[-1]))
        if placement == "plain":
            prop.at_least(f"||change|| / ||x_L|| deleting layer {k + 1}",
                          change / float(np.linalg.norm(full.states[-1])), PLAIN_FLOOR)
            continue
        r2 = change**2 / float(np.sum(np.square(full.writes[k])))
        expected, sd = theory.ablation_ratio(full.states, full.writes[k], k, expected_std(cfg, "out"))
        prop.at_most(f"|r^2 - prod(1 + g_l)| in sampling sds deleting layer {k + 1}", abs(r2 - expected) / sd,
                     budgets.Z)

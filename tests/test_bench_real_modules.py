"""The real modules (backends/modules) in the preset stack benchmarks (bench_presets.py), named through
RESCONF_BENCH_BACKENDS: each times the module as users call it where it claims the preset, and skips
(NotImplementedError in setup, asv's skip) where it does not. What it times is what conformance checks: the
benchmark's output equals the adapter's stack_forward output on the same parameters and input.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks import bench_presets
from benchmarks import common as cm
from resconf.backends.dtypes import round_to
from resconf.backends.params import draw_params
from resconf.backends.registry import BUILTIN, REAL_MODULES, load_backend
from resconf.reports.flops import preset_config

SHAPE, DEPTH = (16, 128), 2  # (tokens, d_model): two 64-dim heads, llama one key/value head


def _installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in BUILTIN[name].requires)


def _to_numpy(a) -> np.ndarray:
    a = a.float() if hasattr(a, "float") and hasattr(a, "detach") else a  # torch: leave the graph, to float32
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)


def test_the_preset_grid_takes_the_named_backends_and_leaves_the_real_modules_out_by_default():
    for cls in (bench_presets.PresetStackForward, bench_presets.PresetStackForwardBackward):
        assert cls.params[0] is cm.STACK_BACKENDS
    assert not set(REAL_MODULES) & set(cm.BUILTIN_STACK), "the real modules are opt-in (the CI smoke's budget)"
    assert cm.extra_backends(",".join(REAL_MODULES)) == REAL_MODULES


@pytest.mark.parametrize("name", REAL_MODULES)
@pytest.mark.parametrize("preset", cm.PRESETS)
def test_a_real_module_times_the_preset_it_claims_and_skips_the_others(name, preset):
    if not _installed(name):
        pytest.skip(f"{name} needs {', '.join(BUILTIN[name].requires)}")
    backend = load_backend(name)
    cfg = preset_config(preset, SHAPE[1], DEPTH)
    if not backend.capabilities.supports(cfg):
        with pytest.raises(NotImplementedError, match=f"{name}.*does not claim {preset} layers"):
            cm.preset_case(name, "cpu", "float32", preset, SHAPE, DEPTH, False)
        return
    forward = cm.preset_case(name, "cpu", "float32", preset, SHAPE, DEPTH, False)
    out = _to_numpy(forward.fn(*forward.args))
    x = _to_numpy(forward.args[0])
    params = tuple(p.map(lambda t: round_to(t, "float32")) for p in draw_params(cfg, cm.SEED, perturb=True))
    expected = backend.stack_forward(cfg, params, x, "float32").output
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, err_msg=f"{name} {preset}: benchmark's forward")
    both = cm.preset_case(name, "cpu", "float32", preset, SHAPE, DEPTH, True)
    dx = _to_numpy(both.fn(*both.args)[0])
    assert dx.shape == (1, *SHAPE) and np.isfinite(dx).all()

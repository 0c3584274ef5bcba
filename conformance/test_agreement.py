"""XB: agreement with the float64 oracle, determinism and layout, for residual blocks and stacks.

Inputs and parameters are rounded to the dtype first, so the oracle computes the same function and
only the backend's intermediate roundings remain (tolerances: conformance/tolerances.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.config import PLACEMENTS
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.recorder import relative_error
from resconf.conformance.requirements import require_cpu, require_placement
from resconf.conformance.tolerances import tolerance


# Where the branch sees the raw stream (every placement but pre), large inputs saturate attention's
# softmax and GELU: the comparison would then measure the problem's conditioning, not the backend.
RAW_STREAM_SCALES = st.sampled_from((1e-2, 1.0))


def _stack_case(data, backend, case, dtype, placement, prop):
    shape, cfg = data.draw(hh.structures(backend, case, placement, "standard", depths=(1, 4)), label="structure")
    scales = hh.scales if placement == "pre" else RAW_STREAM_SCALES
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(scales, label="scale")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale)
    x, g = hh.normal_input(seed, shape, scale, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    return cfg, x, g, hh.params_for(backend, cfg, seed, dtype, perturb=True)


@pytest.mark.property("XB-1")
@pytest.mark.parametrize("placement", PLACEMENTS)
@given(data=st.data())
def test_forward_matches_oracle(subject, oracle, case, dtype, placement, prop, data):
    """Every state of a block or stack within the dtype's forward tolerance of the oracle's."""
    require_placement(subject, placement)
    cfg, x, _, params = _stack_case(data, subject, case, dtype, placement, prop)
    got = subject.stack_forward(cfg, params, x, dtype)
    want = oracle.stack_forward(cfg, params, x, dtype)
    tol = tolerance(dtype, cfg.depth).forward
    prop.at_most("relative error of x_L", relative_error(got.states[-1], want.states[-1]), tol)
    prop.at_most("relative error of the branch outputs", relative_error(got.branches, want.branches), tol)


@pytest.mark.property("XB-2")
@pytest.mark.parametrize("placement", PLACEMENTS)
@given(data=st.data())
def test_vjp_matches_oracle(subject, oracle, case, dtype, placement, prop, data):
    """The input gradient and the gradient of every parameter of every block, each normwise within the
    dtype's gradient tolerance. ReZero's gate gradient is a dot product <g_l, F_l>, compared like ID-3
    against the dot product's error bound, tolerance * sum |g_l F_l|. A gradient whose reference lies
    below the dtype's normal range (a deep plain stack in float16) is outside the domain: not compared."""
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop)
    got = subject.stack_vjp(cfg, params, x, g, dtype)
    want = oracle.stack_vjp(cfg, params, x, g, dtype)
    tol = tolerance(dtype, cfg.depth).gradient
    if hh.resolvable(want.dx, dtype):
        prop.at_most("relative error of d x_0", relative_error(got.dx, want.dx), tol)
    trace = oracle.stack_forward(cfg, params, x, dtype)
    for layer, (gp, wp) in enumerate(zip(got.dparams, want.dparams, strict=True)):
        for (name, a), (_, b) in zip(gp.items(), wp.items(), strict=True):
            if name == "gate":
                g_out = oracle.stack_vjp(cfg, params[layer + 1:], trace.states[layer + 1], g, dtype).dx
                scale = float(np.sum(np.abs(g_out * trace.branches[layer]))) or 1.0
                prop.at_most(f"|error of d gate| / sum|g F| in block {layer}", abs(float(a) - float(b)) / scale, tol)
            elif hh.resolvable(b, dtype):
                prop.at_most(f"relative error of d {name} in block {layer}", relative_error(a, b), tol)


@pytest.mark.property("XB-4")
@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data())
def test_deterministic(subject, case, dtype, placement, prop, data):
    """The same call twice gives bitwise the same states and gradients (CPU)."""
    require_cpu(subject)
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop)
    first, second = (subject.stack_forward(cfg, params, x, dtype) for _ in range(2))
    prop.bitwise_equal("states of two identical calls", second.states, first.states)
    first, second = (subject.stack_vjp(cfg, params, x, g, dtype) for _ in range(2))
    prop.bitwise_equal("d x_0 of two identical calls", second.dx, first.dx)


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in other memory layouts: a strided slice and a transposed view."""
    padded = np.zeros(x.shape[:-1] + (2 * x.shape[-1],))
    padded[..., ::2] = x
    transposed = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    return {"strided": padded[..., ::2], "transposed view": transposed}


@pytest.mark.property("XB-5")
@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data())
def test_layout_does_not_matter(subject, case, dtype, placement, prop, data):
    """Strided and transposed-view inputs give the same result as contiguous ones, within the forward
    tolerance (a backend may pick another kernel for another layout, but not other values)."""
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop)
    want = subject.stack_forward(cfg, params, x, dtype).states[-1]
    tol = tolerance(dtype, cfg.depth).forward
    for layout, view in _layouts(x).items():
        assert not view.flags.c_contiguous and np.array_equal(view, x)
        got = subject.stack_forward(cfg, params, view, dtype).states[-1]
        prop.at_most(f"relative difference for a {layout} input", relative_error(got, want), tol)

"""XB: agreement with the float64 oracle, determinism and layout, for residual blocks and stacks.

Inputs and parameters are rounded to the dtype first, so the oracle computes the same function and
only the backend's intermediate roundings remain. Each comparison's budget is measured on the case by
the baseline (conformance/budgets.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.config import PLACEMENTS, BlockConfig
from resconf.conformance import budgets, profiles
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.recorder import baseline_error, relative_error
from resconf.conformance.requirements import require_branch, require_cpu, require_placement


# Where the branch sees the raw stream (every placement but pre), large inputs saturate attention's
# softmax and GELU: the comparison would then measure the problem's conditioning, not the backend.
RAW_STREAM_SCALES = st.sampled_from((1e-2, 1.0))


def _param(layer: int, name: str):
    """Picks parameter `name` of block `layer` from a StackGrads."""
    return lambda grads: getattr(grads.dparams[layer], name)


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
def test_forward_matches_oracle(subject, oracle, baseline, case, dtype, placement, prop, data):
    """x_L and every branch output of a block or stack within the case's forward budget."""
    require_placement(subject, placement)
    cfg, x, _, params = _stack_case(data, subject, case, dtype, placement, prop)
    got, want, base = (b.stack_forward(cfg, params, x, dtype) for b in (subject, oracle, baseline))
    prop.within_budget("x_L", got.states[-1], want.states[-1], base.pick(lambda t: t.states[-1]), "forward", dtype,
                       cfg.depth)
    prop.within_budget("the branch outputs", got.branches, want.branches, base.pick(lambda t: t.branches), "forward",
                       dtype, cfg.depth)


@pytest.mark.property("XB-2")
@pytest.mark.parametrize("placement", PLACEMENTS)
@given(data=st.data())
def test_vjp_matches_oracle(subject, oracle, baseline, case, dtype, placement, prop, data):
    """The input gradient and the gradient of every parameter of every block, each normwise within the
    case's gradient budget. ReZero's gate gradient is a dot product <g_l, F_l>, its error measured, like
    ID-3, against sum |g_l F_l| (budgets.py, 2.). A gradient whose reference lies below the dtype's normal
    range (a deep plain stack in float16) is outside the domain: not compared."""
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop)
    got, want, base = (b.stack_vjp(cfg, params, x, g, dtype) for b in (subject, oracle, baseline))
    if hh.resolvable(want.dx, dtype):
        prop.within_budget("d x_0", got.dx, want.dx, base.pick(lambda gr: gr.dx), "gradient", dtype, cfg.depth)
    trace = oracle.stack_forward(cfg, params, x, dtype)
    for layer, (gp, wp) in enumerate(zip(got.dparams, want.dparams, strict=True)):
        for (name, a), (_, b) in zip(gp.items(), wp.items(), strict=True):
            scale = None
            if name == "gate":
                g_out = oracle.stack_vjp(cfg, params[layer + 1:], trace.states[layer + 1], g, dtype).dx
                scale = float(np.sum(np.abs(g_out * trace.branches[layer]))) or 1.0
            elif not hh.resolvable(b, dtype):
                continue
            prop.within_budget(f"d {name} in block {layer}", a, b, base.pick(_param(layer, name)), "gradient", dtype,
                               cfg.depth, scale=scale)


# T = 256: several blocks of a blockwise (flash) attention kernel, whose softmax must rescale the earlier
# blocks. 32 x 256 = 8192 tokens for the mlp: a weight gradient summed over them in bfloat16 errs by
# ~sqrt(8192 / 6) u = 37 u, far outside its budget (budgets.py), where the few tokens of hh.SHAPES hide it.
LONG_SHAPES = {"attention": (2, 256, 16), "mlp": (32, 256, 16)}


def _long_case(data, backend, dtype, branch, norm, prop):
    require_placement(backend, "pre")
    require_branch(backend, branch, norm)
    shape = LONG_SHAPES[branch]
    cfg = BlockConfig(placement="pre", norm=norm, branch=branch, d_model=shape[-1])
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    return cfg, x, g, hh.params_for(backend, cfg, seed, dtype, perturb=True)


@pytest.mark.property("XB-1")
@pytest.mark.parametrize("norm", ["rmsnorm"])
@profiles.heavy()
@given(data=st.data())
def test_long_sequence_forward(subject, oracle, baseline, dtype, norm, prop, data):
    """Causal attention over T = 256 tokens within the forward budget (a blockwise softmax that forgets
    to rescale the earlier blocks errs by the growth of the running maximum)."""
    cfg, x, _, params = _long_case(data, subject, dtype, "attention", norm, prop)
    got, want, base = (b.stack_forward(cfg, params, x, dtype) for b in (subject, oracle, baseline))
    prop.within_budget("the branch outputs over 256 tokens", got.branches, want.branches,
                       base.pick(lambda t: t.branches), "forward", dtype)


@pytest.mark.property("XB-2")
@pytest.mark.parametrize("branch,norm", [("attention", "rmsnorm"), ("mlp", "rmsnorm"), ("mlp", "layernorm")])
@profiles.heavy()
@given(data=st.data())
def test_long_sequence_vjp(subject, oracle, baseline, dtype, branch, norm, prop, data):
    """Every gradient over many tokens (LONG_SHAPES) within its budget: weight gradients are sums over
    all tokens, so an accumulation in a too narrow dtype shows here."""
    cfg, x, g, params = _long_case(data, subject, dtype, branch, norm, prop)
    got, want, base = (b.stack_vjp(cfg, params, x, g, dtype) for b in (subject, oracle, baseline))
    prop.within_budget("d x_0", got.dx, want.dx, base.pick(lambda gr: gr.dx), "gradient", dtype)
    for (name, a), (_, b) in zip(got.dparams[0].items(), want.dparams[0].items(), strict=True):
        if hh.resolvable(b, dtype):
            prop.within_budget(f"d {name}", a, b, base.pick(_param(0, name)), "gradient", dtype)


@pytest.mark.property("XB-4")
@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data())
def test_deterministic(subject, case, dtype, placement, prop, data):
    """The same call twice gives bitwise the same states and the same gradients of x_0 and of every
    parameter (CPU): a weight gradient reduced over tokens in a racy or call-dependent order differs."""
    require_cpu(subject)
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop)
    first, second = (subject.stack_forward(cfg, params, x, dtype) for _ in range(2))
    prop.bitwise_equal("states of two identical calls", second.states, first.states)
    first, second = (subject.stack_vjp(cfg, params, x, g, dtype) for _ in range(2))
    prop.bitwise_equal("d x_0 of two identical calls", second.dx, first.dx)
    for layer, (a, b) in enumerate(zip(first.dparams, second.dparams, strict=True)):
        for (name, one), (_, two) in zip(a.items(), b.items(), strict=True):
            prop.bitwise_equal(f"d {name} in block {layer} of two identical calls (a racy or order-dependent "
                               f"reduction differs)", two, one)


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in other memory layouts: a strided slice and a transposed view."""
    padded = np.zeros(x.shape[:-1] + (2 * x.shape[-1],))
    padded[..., ::2] = x
    transposed = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    return {"strided": padded[..., ::2], "transposed view": transposed}


@pytest.mark.property("XB-5")
@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data())
def test_layout_does_not_matter(subject, oracle, baseline, case, dtype, placement, prop, data):
    """Strided and transposed-view inputs give the same result as contiguous ones (a backend may pick
    another kernel for another layout, but not other values): the two differ by at most the sum of two
    legitimate errors, twice the case's forward budget."""
    require_placement(subject, placement)
    cfg, x, g, params = _stack_case(data, subject, case, dtype, placement, prop)
    want = subject.stack_forward(cfg, params, x, dtype).states[-1]
    ref = oracle.stack_forward(cfg, params, x, dtype).states[-1]
    base = baseline.stack_forward(cfg, params, x, dtype).pick(lambda t: t.states[-1])()
    allowed = 2 * budgets.budget("forward", dtype, baseline_error(base, ref), cfg.depth).allowed
    for layout, view in _layouts(x).items():
        assert not view.flags.c_contiguous and np.array_equal(view, x)
        got = subject.stack_forward(cfg, params, view, dtype).states[-1]
        prop.at_most(f"relative difference for a {layout} input", relative_error(got, want), allowed)

"""ID: identity at zero. A block whose branch writes exactly zero must be exactly the identity.

x + 0 is exact in IEEE arithmetic, so these are bitwise checks (only -0.0 + 0.0 = +0.0 may differ,
and == treats those as equal). Domain: finite x with |x| <= hh.identity_domain(dtype, C), where no
norm statistic can overflow; subnormal x is a case of its own.
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.dtypes import round_to
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.requirements import require_placement

# (placement, init) pairs whose branch writes zero: zero output projection, or ReZero's a = 0.
ZERO_WRITE = [("pre", "zero"), ("rezero", "zero"), ("rezero", "rezero")]


def _zero_write_case(data, backend, case, dtype, placement, init, depths, prop, layer, subnormals=False):
    shape, cfg = data.draw(hh.structures(backend, case, placement, init, depths=depths, layer=layer), label="structure")
    x = data.draw(hh.finite_arrays(dtype, shape, hh.identity_domain(dtype, shape[-1]), subnormals), label="x")
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, max_abs_x=float(np.max(np.abs(x))))
    return cfg, x, hh.params_for(backend, cfg, seed, dtype)


@pytest.mark.property("ID-1")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement,init", ZERO_WRITE)
@given(data=st.data())
def test_identity_block(subject, case, dtype, placement, init, layer, prop, data):
    require_placement(subject, placement)
    cfg, x, params = _zero_write_case(data, subject, case, dtype, placement, init, (1,), prop, layer)
    y = subject.stack_forward(cfg, params, x, dtype).states[-1]
    prop.bitwise_equal("block output with a zero branch", y, x)


@pytest.mark.property("ID-1")
@pytest.mark.parametrize("placement,init", [("pre", "zero")])
@given(data=st.data())
def test_identity_subnormal(subject, case, dtype, placement, init, prop, data):
    """Subnormal x must survive x + 0 too (a backend that flushes subnormals to zero fails here alone)."""
    require_placement(subject, placement)
    cfg, x, params = _zero_write_case(data, subject, case, dtype, placement, init, (1,), prop, "block", subnormals=True)
    y = subject.stack_forward(cfg, params, x, dtype).states[-1]
    prop.bitwise_equal("block output for subnormal x", y, x)


@pytest.mark.property("ID-2")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement,init", ZERO_WRITE)
@given(data=st.data())
def test_identity_stack(subject, case, dtype, placement, init, layer, prop, data):
    require_placement(subject, placement)
    cfg, x, params = _zero_write_case(data, subject, case, dtype, placement, init, hh.DEPTHS, prop, layer)
    states = subject.stack_forward(cfg, params, x, dtype).states
    prop.bitwise_equal(f"every state of a depth-{cfg.depth} stack ({cfg.n_updates} updates)", states,
                       np.broadcast_to(x, states.shape))


@pytest.mark.property("ID-3")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement,init", ZERO_WRITE)
@given(data=st.data())
def test_identity_gradient(subject, case, dtype, placement, init, layer, prop, data, oracle, baseline):
    """The input VJP is bitwise g; for ReZero, dL/da_l = <g, F_l(x)> (every later block is the identity,
    so block l sees the cotangent g unchanged). That dot product's error is measured against
    sum |g F| (budgets.py, 2.), since cancellation makes a relative error of <g, F> meaningless."""
    require_placement(subject, placement)
    cfg, x, params = _zero_write_case(data, subject, case, dtype, placement, init, (3,), prop, layer)
    g = hh.normal_input(data.draw(hh.seeds, label="g_seed"), x.shape, 1.0, dtype)
    grads = subject.stack_vjp(cfg, params, x, g, dtype)
    prop.bitwise_equal("input VJP with zero branches", grads.dx, g)
    if init == "rezero":
        # The gate gradient <g, F(x)> is a value, not an identity: compared where F is well conditioned, x
        # scaled into [-1, 1] (ReZero's branch sees the raw stream, and a huge x saturates attention's softmax,
        # whose near-ties then flip with any rounding: seen, 0.13 relative in float32 at |x| ~ 1e18).
        x = round_to(x / max(1.0, float(np.max(np.abs(x), initial=0.0))), dtype)
        grads = subject.stack_vjp(cfg, params, x, g, dtype)
        writes = oracle.stack_forward(cfg, params, x, dtype).writes
        base = baseline.stack_vjp(cfg, params, x, g, dtype)
        for (index, _, kinds), f in zip(ref.layer_updates(cfg, params), writes, strict=True):
            name = f"{kinds[0]}.gate"  # rezero layers are sequential: one sublayer, one gate per update
            prop.within_budget(f"dL/da against <g, F> of {name} in layer {index}", grads.dparams[index][name],
                               np.sum(g * f), base.pick(lambda gr, i=index, n=name: gr.dparams[i][n]), "gradient",
                               prop.parameter_dtype(dtype), cfg.n_updates, scale=float(np.sum(np.abs(g * f))) or 1.0)


@pytest.mark.property("ID-4")
@pytest.mark.parametrize("layer", hh.LAYERS)
@pytest.mark.parametrize("placement", ["post", "deepnorm", "plain"])
@given(data=st.data())
def test_negative_control(subject, baseline, case, dtype, placement, layer, prop, data):
    """With a zero branch, post gives N(x) and deepnorm N(alpha x), not x (each sublayer's norm in turn);
    plain gives exactly 0. A backend whose `post` returns x fails here."""
    require_placement(subject, placement)
    shape, cfg = data.draw(hh.structures(subject, case, placement, "zero", layer=layer), label="structure")
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(hh.scales, label="scale")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale)
    x = hh.normal_input(seed, shape, scale, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)  # random gains and biases: N must use them
    y = subject.stack_forward(cfg, params, x, dtype).states[-1]
    if placement == "plain":
        prop.bitwise_equal("plain block with a zero branch", y, np.zeros_like(x))
        return
    expected = x
    for kinds in cfg.updates:  # one layer (depth 1): each sublayer's norm of the scaled stream
        expected = ref.norm(cfg, params[0].sub(kinds[0]), cfg.skip * expected)
    prop.within_budget(f"the output against N({'alpha ' if placement == 'deepnorm' else ''}x) per sublayer", y,
                       expected, baseline.stack_forward(cfg, params, x, dtype).pick(lambda t: t.states[-1]), "forward",
                       dtype, cfg.n_updates, reduction=cfg.d_model)

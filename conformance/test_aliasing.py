"""XB-7: a backend never writes into the caller's arrays (inputs, parameters, cotangents) and returns none of
them, nor a view of one.

Every array crosses the adapter border as NumPy (backends/base.py), so the border is where aliasing shows:
a framework tensor made with torch.from_numpy (or a float64 `.to(...)`, which copies nothing) shares the
caller's memory, and an in-place kernel (a backward accumulating dx into its cotangent, a fused add+norm
writing the sum into its residual argument, as vLLM's and Liger's in-place variants do: Liger #370, #1305)
then overwrites it, or hands it back as an output that the caller's next write changes. Each call's inputs
are copied before it and compared bitwise after it (clone and compare); each output is checked with
np.shares_memory against each input.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.fused_args import residual_dtype
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance import profiles
from resconf.conformance.requirements import require_placement
from resconf.conformance.test_fused import VARIANT_IDS, VARIANTS, _fused_case


def _named_params(params) -> dict[str, np.ndarray]:
    return {f"{name} of layer {layer}": t for layer, p in enumerate(params) for name, t in p.items()}


def _call_leaves_inputs_alone(prop, what: str, call, inputs: dict[str, np.ndarray | None]) -> dict:
    """Runs call(); every input is bitwise what it was before, and no output (call() gives a dict of them)
    shares memory with an input."""
    inputs = {name: a for name, a in inputs.items() if a is not None}
    before = {name: a.copy() for name, a in inputs.items()}
    outputs = {name: a for name, a in call().items() if a is not None}
    for name, a in inputs.items():
        prop.bitwise_equal(f"the caller's {name} after {what} (written in place)", a, before[name])
    shared = [f"{out} with the caller's {name}" for out, o in outputs.items() for name, a in inputs.items()
              if np.shares_memory(np.asarray(o), a)]
    prop.at_most(f"outputs of {what} sharing memory with an input ({'; '.join(shared[:3]) or 'none'})",
                 len(shared), 0)
    return outputs


@pytest.mark.property("XB-7")
@pytest.mark.parametrize("layer", hh.LAYERS)
@profiles.heavy()
@given(data=st.data())
def test_block_calls_leave_inputs_alone(subject, case, dtype, layer, prop, data):
    """stack_forward and stack_vjp of pre stacks leave x, g and every parameter as they were, and return none
    of them (an adapter converts its arrays in one place for every placement: pre stands for all)."""
    require_placement(subject, "pre")
    shape, cfg = data.draw(hh.structures(subject, case, "pre", "standard", depths=(1, 4), layer=layer),
                           label="structure")
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed)
    x, g = hh.normal_input(seed, shape, 1.0, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)
    named = {"x": x, **_named_params(params)}

    def forward():
        trace = subject.stack_forward(cfg, params, x, dtype)
        return {"states": trace.states, "writes": trace.writes, "final": trace.final}

    def vjp():
        grads = subject.stack_vjp(cfg, params, x, g, dtype)
        return {"d x_0": grads.dx, **{f"d {n}": t for n, t in _named_params(grads.dparams).items()}}

    _call_leaves_inputs_alone(prop, "stack_forward", forward, named)
    _call_leaves_inputs_alone(prop, "stack_vjp", vjp, {**named, "cotangent g": g})


@pytest.mark.property("XB-7")
@pytest.mark.parametrize("kind,with_bias,residual_in_fp32", VARIANTS[1:3] + VARIANTS[5:],
                         ids=VARIANT_IDS[1:3] + VARIANT_IDS[5:])
@profiles.heavy()
@given(data=st.data())
def test_fused_calls_leave_inputs_alone(subject, case, dtype, kind, with_bias, residual_in_fp32, prop, data):
    """fused_add_norm and its VJP leave x, the residual, weight, bias and both cotangents as they were (an
    in-place kernel writes x + residual into the residual), and return none of them."""
    x, residual, weight, bias, seed = _fused_case(data, subject, case, dtype, kind, with_bias, residual_in_fp32, prop)
    g_out = hh.normal_input(seed + 4, x.shape, 1.0, dtype)
    g_res = hh.normal_input(seed + 5, x.shape, 1.0, residual_dtype(dtype, residual_in_fp32))
    args = (x, residual, weight, bias, 1e-5, kind, dtype)
    named = {"x": x, "residual": residual, "weight": weight, "bias": bias}
    _call_leaves_inputs_alone(prop, "fused_add_norm", lambda: dict(zip(
        ("output", "new residual"), subject.fused_add_norm(*args, residual_in_fp32))), named)
    _call_leaves_inputs_alone(prop, "fused_add_norm_vjp", lambda: vars(
        subject.fused_add_norm_vjp(*args, g_out, g_res, residual_in_fp32)), {**named, "g_out": g_out,
                                                                                "g_residual": g_res})

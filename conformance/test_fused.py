"""XB-3: fused add+norm, fused_add_norm(x, residual, weight, bias, eps, kind) ->
(norm(x + residual) * weight (+ bias), x + residual), plus its determinism (XB-4) and non-finite
inputs (BI-3). The returned residual must be bitwise the unfused add in the residual dtype."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.dtypes import NARROW_DTYPES
from resconf.backends.fused_args import residual_dtype
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.requirements import require_cpu, require_fused

# (rows, C): odd hidden sizes and rows longer than one block for kernels that tile the hidden size
FUSED_SHAPES = ((4, 16), (3, 33), (5, 100), (2, 1030))
VARIANTS = [("rmsnorm", False, False), ("rmsnorm", True, False), ("layernorm", True, False),
            ("layernorm", False, False), ("rmsnorm", False, True), ("layernorm", True, True)]
VARIANT_IDS = ["rms", "rms+bias", "layer+bias", "layer", "rms-res32", "layer+bias-res32"]


def _fused_case(data, backend, case, dtype, kind, with_bias, residual_in_fp32, prop, shapes=FUSED_SHAPES):
    if residual_in_fp32 and dtype not in NARROW_DTYPES:
        pytest.skip("residual_in_fp32 changes only narrower dtypes than float32")
    require_fused(backend, kind)
    shapes = shapes if hh.STRUCTURE_PER_EXAMPLE else (shapes[case % len(shapes)],)
    shape = data.draw(st.sampled_from(shapes), label="shape")
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(hh.scales, label="scale")
    prop.example(kind=kind, bias=with_bias, residual_in_fp32=residual_in_fp32, shape=shape, seed=seed, scale=scale)
    x = hh.normal_input(seed, shape, scale, dtype)
    residual = hh.normal_input(seed + 1, shape, scale, residual_dtype(dtype, residual_in_fp32))
    weight = hh.normal_input(seed + 2, shape[-1:], 1.0, dtype)
    bias = hh.normal_input(seed + 3, shape[-1:], 0.1, dtype) if with_bias else None
    return x, residual, weight, bias, seed


@pytest.mark.property("XB-3")
@pytest.mark.parametrize("kind,with_bias,residual_in_fp32", VARIANTS, ids=VARIANT_IDS)
@given(data=st.data())
def test_fused_add_norm(subject, oracle, baseline, case, dtype, kind, with_bias, residual_in_fp32, prop, data):
    x, residual, weight, bias, seed = _fused_case(data, subject, case, dtype, kind, with_bias, residual_in_fp32, prop)
    eps, C = 1e-5, x.shape[-1]
    args = (x, residual, weight, bias, eps, kind, dtype)
    (out, new_residual), (want_out, want_residual) = (b.fused_add_norm(*args, residual_in_fp32) for b in (subject, oracle))
    base = baseline.fused_add_norm(*args, residual_in_fp32).pick(lambda result: result[0])
    prop.bitwise_equal("returned residual against the unfused add in the residual dtype", new_residual, want_residual)
    prop.within_budget("the normalised output", out, want_out, base, "forward", dtype, reduction=C)
    g_out = hh.normal_input(seed + 4, x.shape, 1.0, dtype)
    g_res = hh.normal_input(seed + 5, x.shape, 1.0, residual_dtype(dtype, residual_in_fp32))
    got, want, base = (b.fused_add_norm_vjp(*args, g_out, g_res, residual_in_fp32) for b in (subject, oracle, baseline))
    for name in ("dx", "dresidual", "dweight", "dbias"):
        if getattr(want, name) is not None:
            prop.within_budget(name, getattr(got, name), getattr(want, name),
                               base.pick(lambda grads, name=name: getattr(grads, name)), "gradient", dtype, reduction=C)


@pytest.mark.property("XB-4")
@pytest.mark.parametrize("kind,with_bias,residual_in_fp32", VARIANTS[1:3], ids=VARIANT_IDS[1:3])
@given(data=st.data())
def test_fused_deterministic(subject, case, dtype, kind, with_bias, residual_in_fp32, prop, data):
    require_cpu(subject)
    x, residual, weight, bias, seed = _fused_case(data, subject, case, dtype, kind, with_bias, residual_in_fp32, prop)
    calls = [subject.fused_add_norm(x, residual, weight, bias, 1e-5, kind, dtype) for _ in range(2)]
    prop.bitwise_equal("fused output of two identical calls", calls[1][0], calls[0][0])
    g = hh.normal_input(seed + 4, x.shape, 1.0, dtype)
    grads = [subject.fused_add_norm_vjp(x, residual, weight, bias, 1e-5, kind, dtype, g, g) for _ in range(2)]
    prop.bitwise_equal("dweight of two identical calls (a racy reduction differs)", grads[1].dweight, grads[0].dweight)


@pytest.mark.property("BI-3")
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("operand", ["x", "residual"])
@pytest.mark.parametrize("special", ["nan", "inf"])
def test_fused_non_finite_stays_in_its_row(subject, oracle, dtype, kind, operand, special, prop):
    """A NaN or Inf in one row of x or of the residual makes that row's sum and normalised output
    non-finite where the maths does (the oracle's), and no other row's: never replaced, never spread."""
    require_fused(subject, kind)
    inputs = {"x": hh.normal_input(0, (6, 16), 1.0, dtype), "residual": hh.normal_input(1, (6, 16), 1.0, dtype)}
    row, feature = 2, 5
    prop.example(kind=kind, operand=operand, special=special, row=row, feature=feature)
    inputs[operand][row, feature] = math.nan if special == "nan" else math.inf
    args = (inputs["x"], inputs["residual"], hh.normal_input(2, (16,), 1.0, dtype), None, 1e-5, kind, dtype)
    for (got, want), what in zip(zip(subject.fused_add_norm(*args), oracle.fused_add_norm(*args)),
                                 ("normalised output", "new residual")):
        prop.bitwise_equal(f"non-finite pattern of the {what} against the maths'", ~np.isfinite(got), ~np.isfinite(want))

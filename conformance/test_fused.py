"""XB-3: fused add+norm, fused_add_norm(x, residual, weight, bias, eps, kind) ->
(norm(x + residual) * weight (+ bias), x + residual), plus its determinism (XB-4), shape errors (BI-1)
and empty inputs (BI-4). The returned residual must be bitwise the unfused add in the residual dtype."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.fused_args import residual_dtype
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.recorder import relative_error
from resconf.conformance.requirements import require_cpu, require_fused
from resconf.conformance.tolerances import tolerance

# (rows, C): odd hidden sizes and rows longer than one block for kernels that tile the hidden size
FUSED_SHAPES = ((4, 16), (3, 33), (5, 100), (2, 1030))
VARIANTS = [("rmsnorm", False, False), ("rmsnorm", True, False), ("layernorm", True, False),
            ("layernorm", False, False), ("rmsnorm", False, True), ("layernorm", True, True)]
VARIANT_IDS = ["rms", "rms+bias", "layer+bias", "layer", "rms-res32", "layer+bias-res32"]


def _fused_case(data, backend, case, dtype, kind, with_bias, residual_in_fp32, prop):
    if residual_in_fp32 and dtype not in ("bfloat16", "float16"):
        pytest.skip("residual_in_fp32 changes only narrower dtypes than float32")
    require_fused(backend, kind)
    shapes = FUSED_SHAPES if hh.STRUCTURE_PER_EXAMPLE else (FUSED_SHAPES[case % len(FUSED_SHAPES)],)
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
def test_fused_add_norm(subject, oracle, case, dtype, kind, with_bias, residual_in_fp32, prop, data):
    x, residual, weight, bias, seed = _fused_case(data, subject, case, dtype, kind, with_bias, residual_in_fp32, prop)
    eps = 1e-5
    out, new_residual = subject.fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
    want_out, want_residual = oracle.fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
    prop.bitwise_equal("returned residual against the unfused add in the residual dtype", new_residual, want_residual)
    tol = tolerance(dtype, reduction=x.shape[-1])
    prop.at_most("relative error of the normalised output", relative_error(out, want_out), tol.forward)
    g_out = hh.normal_input(seed + 4, x.shape, 1.0, dtype)
    g_res = hh.normal_input(seed + 5, x.shape, 1.0, residual_dtype(dtype, residual_in_fp32))
    got = subject.fused_add_norm_vjp(x, residual, weight, bias, eps, kind, dtype, g_out, g_res, residual_in_fp32)
    want = oracle.fused_add_norm_vjp(x, residual, weight, bias, eps, kind, dtype, g_out, g_res, residual_in_fp32)
    for name in ("dx", "dresidual", "dweight", "dbias"):
        if getattr(want, name) is not None:
            prop.at_most(f"relative error of {name}", relative_error(getattr(got, name), getattr(want, name)),
                         tol.gradient)


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

"""XB-8: torch.library.opcheck on every torch op a backend's fused add+norm runs (Backend.fused_add_norm_ops):
the schema (no input mutated, no output aliasing an input or another output), the fake kernel (the outputs'
shapes, dtypes and strides are the real kernel's), the autograd registration, and AOT dispatch (AOTAutograd's
trace with static and with dynamic shapes gives eager's outputs and gradients). These are what torch.compile
and autograd rely on and no numerical property sees: a fake kernel with the wrong dtype compiles to a graph
that is wrong downstream. Inputs as XB-3's; a backend that runs no registered op (NumPy, JAX, numba) skips."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.conformance import profiles
from resconf.conformance.test_fused import VARIANT_IDS, VARIANTS, _fused_case

# small, as Triton's interpreter runs every launch on the CPU; odd and leading-(B, T) shapes for the fakes' strides
OPCHECK_SHAPES = ((3, 16), (2, 3, 24), (4, 33))
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                 "test_aot_dispatch_dynamic")


def _first_line(error: Exception) -> str:
    line = next((ln for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return line if len(line) <= 200 else line[:197] + "..."


@pytest.mark.property("XB-8")
@pytest.mark.parametrize("kind,with_bias,residual_in_fp32", VARIANTS, ids=VARIANT_IDS)
@profiles.heavy()  # opcheck checks metadata and registrations: values matter little, each call is slow
@given(data=st.data())
def test_fused_ops_pass_opcheck(subject, case, dtype, kind, with_bias, residual_in_fp32, prop, data):
    x, residual, weight, bias, _ = _fused_case(data, subject, case, dtype, kind, with_bias, residual_in_fp32, prop,
                                               OPCHECK_SHAPES)
    calls = subject.fused_add_norm_ops(x, residual, weight, bias, 1e-5, kind, dtype, residual_in_fp32)
    if not calls:
        pytest.skip(f"{subject.name} runs no registered torch op for fused add+{kind} (Backend.fused_add_norm_ops)")
    from torch.library import opcheck  # torch only for a backend that gave torch ops

    for call in calls:
        results = opcheck(call.op, call.args, test_utils=OPCHECK_UTILS, raise_exception=False)
        failed = [f"{util}: {_first_line(r)}" for util, r in results.items() if r != "SUCCESS"]
        name = getattr(call.op, "_qualname", call.op)
        prop.at_most(f"opcheck utilities failing on {name} ({'; '.join(failed) or 'none'})", len(failed), 0)

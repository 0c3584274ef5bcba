"""A fused op registered with a wrong fake kernel: our Triton backend (backends/kernels/triton_fused.py) running
the same kernels through an op whose fake says the new residual is in x's dtype, as a fake written with only
residual_in_fp32=False in mind would. Eager numbers are right, so XB-3 passes; opcheck's fake-tensor check
(XB-8) sees it, as torch.compile would plan a bfloat16 buffer for a float32 residual. Named in
conformance/catalogue.py and run by tests/test_mutants.py under Triton's interpreter on SELECTION's cases."""
from __future__ import annotations

import torch

from resconf.backends.kernels import triton_op
from resconf.backends.kernels.triton_fused import TritonFusedBackend
from resconf.conformance import catalogue


def _fake_residual_in_x_dtype(x, residual, weight, bias, eps, rms, max_block):
    out, _, mean, rstd = triton_op.forward_fake(x, residual, weight, bias, eps, rms, max_block)
    return out, torch.empty_like(out), mean, rstd


class FakeResidualInComputeDtype(TritonFusedBackend):
    """The fused op's fake kernel gives the new residual x's dtype, not the residual's (float32 under
    residual_in_fp32)."""

    op = triton_op.define("resconf_mutants::fake_residual_in_compute_dtype", _fake_residual_in_x_dtype)


MUTANTS = (FakeResidualInComputeDtype,)
EXPECTED = catalogue.caught_by(MUTANTS)
# residual_in_fp32 runs only for dtypes narrower than float32; float16: the interpreter's is the fastest
SELECTION = {FakeResidualInComputeDtype: "test_fused_ops_pass_opcheck and float16 and res32"}
for _mutant in MUTANTS:
    _mutant.name = _mutant.__name__

"""Our Triton fused add+norm (backends/kernels/triton_kernels.py) registered as torch ops, so that autograd,
torch.compile and torch.library.opcheck see one opaque op with a schema, a fake kernel and a backward:

    resconf::triton_fused_add_norm(x, residual, weight, bias?, eps, rms, max_block)
        -> (out, new_residual, mean, rstd)
    resconf::triton_fused_add_norm_backward(g_out, g_residual?, new_residual, weight, mean, rstd, with_bias,
                                            rms, max_block) -> (dx, dresidual, dweight, dbias)

out and new_residual have x's shape; new_residual is in the residual's dtype (the caller picks it: float32 for
residual_in_fp32); mean and rstd are per row, float32 (mean zeros for RMSNorm). dx and dresidual are in
g_out's dtype (the kernel writes one value for both); dbias is zeros without a bias. The kernels module is
looked up at call time: tests import it afresh under the interpreter (tests/test_kernels.py).
"""
from __future__ import annotations

import importlib
import math
from typing import Callable

import torch

KERNELS_MODULE = "resconf.backends.kernels.triton_kernels"


def _rows(t: torch.Tensor) -> int:
    return math.prod(t.shape[:-1])


def forward_fake(x, residual, weight, bias, eps, rms, max_block):
    """What the forward returns, as metadata only (shapes, dtypes, contiguous strides)."""
    n = _rows(x)
    stat = x.new_empty((n,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty(x.shape, dtype=residual.dtype, device=x.device), stat, stat.clone()


def define(name: str, fake: Callable = forward_fake):
    """Register the forward and backward ops under `name` (and name + "_backward") with `fake` as the
    forward's fake kernel; returns the forward op. tests/opcheck_mutants.py registers one with a wrong fake."""

    @torch.library.custom_op(name, mutates_args=())
    def fused_add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       eps: float, rms: bool, max_block: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        kernels = importlib.import_module(KERNELS_MODULE)
        fwd = kernels.add_norm_forward(x, residual, weight, bias, eps, rms, residual.dtype, max_block)
        mean = fwd.mean.zero_() if rms else fwd.mean  # the kernel leaves RMSNorm's mean unwritten
        return fwd.out.view(x.shape), fwd.new_residual.view(x.shape), mean, fwd.rstd

    @torch.library.custom_op(name + "_backward", mutates_args=())
    def fused_add_norm_backward(g_out: torch.Tensor, g_residual: torch.Tensor | None, new_residual: torch.Tensor,
                                weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, with_bias: bool,
                                rms: bool, max_block: int
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        kernels = importlib.import_module(KERNELS_MODULE)
        fwd = kernels.Forward(None, new_residual.reshape(-1, new_residual.shape[-1]), mean, rstd)
        dx, dres, dw, db = kernels.add_norm_backward(g_out, g_residual, fwd, weight, with_bias, rms, g_out.dtype,
                                                     max_block)
        dres = dres.clone() if dres is dx else dres  # an op's outputs never share memory
        return dx.view(g_out.shape), dres.view(g_out.shape), dw, torch.zeros_like(weight) if db is None else db

    fused_add_norm.register_fake(fake)

    @fused_add_norm_backward.register_fake
    def _(g_out, g_residual, new_residual, weight, mean, rstd, with_bias, rms, max_block):
        grad = torch.empty(g_out.shape, dtype=g_out.dtype, device=g_out.device)
        return grad, torch.empty_like(grad), torch.empty_like(weight), torch.empty_like(weight)

    def setup_context(ctx, inputs, output):
        x, residual, weight, bias, eps, rms, max_block = inputs
        _, new_residual, mean, rstd = output
        ctx.save_for_backward(new_residual, weight, mean, rstd)
        ctx.with_bias, ctx.rms, ctx.max_block = bias is not None, rms, max_block

    def backward(ctx, g_out, g_residual, g_mean, g_rstd):  # mean and rstd are statistics: no gradient
        new_residual, weight, mean, rstd = ctx.saved_tensors
        dx, dres, dw, db = fused_add_norm_backward(g_out, g_residual, new_residual, weight, mean, rstd,
                                                   ctx.with_bias, ctx.rms, ctx.max_block)
        return dx, dres, dw, db if ctx.with_bias else None, None, None, None

    fused_add_norm.register_autograd(backward, setup_context=setup_context)
    return fused_add_norm


fused_add_norm = define("resconf::triton_fused_add_norm")

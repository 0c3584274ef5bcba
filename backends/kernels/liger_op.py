"""Liger-Kernel's fused add + RMSNorm (liger_kernel.ops.fused_add_rms_norm) wrapped as a torch op, the way a
user who wants one opaque op for torch.compile would register it; Liger registers none of its own:

    resconf::liger_fused_add_rms_norm(X, R, W, eps, offset, casting_mode) -> (Y, S, RSTD)

It calls the same forward and backward functions, with the same launch settings, as Liger's
LigerFusedAddRMSNormFunction (in_place=False), so its numbers are that Function's (tests/test_liger.py). The
fake kernel states what Liger's kernels allocate: S in X's dtype, whatever R's dtype is (the residual_in_fp32
expected failure of XB-3), RSTD float32 except in casting mode "none". Liger has no fused add + LayerNorm, so
there is no op for it. Under Triton's interpreter the per-call bridges (liger_interpret.py) wrap each call.
"""
from __future__ import annotations

import torch
from liger_kernel.ops import fused_add_rms_norm as rms
from liger_kernel.ops.utils import calculate_settings

from resconf.backends.kernels import liger_interpret

NUM_STAGES = 2  # fused_add_rms_norm_forward's, which the Function hands to its backward


@torch.library.custom_op("resconf::liger_fused_add_rms_norm", mutates_args=())
def fused_add_rms_norm(X: torch.Tensor, R: torch.Tensor, W: torch.Tensor, eps: float, offset: float,
                       casting_mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with liger_interpret.bridged(rms):  # contiguous, as the Function's @ensure_contiguous makes them
        Y, S, RSTD, *_ = rms.fused_add_rms_norm_forward(X.contiguous(), R.contiguous(), W.contiguous(), eps,
                                                        offset, casting_mode)
    return Y, S, RSTD


@fused_add_rms_norm.register_fake
def _(X, R, W, eps, offset, casting_mode):
    rstd_dtype = X.dtype if casting_mode == "none" else torch.float32
    return (torch.empty(X.shape, dtype=X.dtype, device=X.device), torch.empty(X.shape, dtype=X.dtype, device=X.device),
            X.new_empty((X.numel() // max(X.shape[-1], 1),), dtype=rstd_dtype))


@torch.library.custom_op("resconf::liger_fused_add_rms_norm_backward", mutates_args=())
def fused_add_rms_norm_backward(dY: torch.Tensor, dS_out: torch.Tensor, S: torch.Tensor, W: torch.Tensor,
                                RSTD: torch.Tensor, offset: float, casting_mode: str
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    block_size, num_warps = calculate_settings(S.shape[-1])
    with liger_interpret.bridged(rms):
        dX, _, dW = rms.fused_add_rms_norm_backward(dY.contiguous(), dS_out.contiguous(), S, W, RSTD, offset,
                                                    rms._str_to_casting_mode[casting_mode], block_size, num_warps,
                                                    NUM_STAGES, False, needs_dw=True)
    return dX, dX.clone(), dW  # Liger returns dX for dR too; an op's outputs never share memory


@fused_add_rms_norm_backward.register_fake
def _(dY, dS_out, S, W, RSTD, offset, casting_mode):
    return torch.empty_like(dY), torch.empty_like(dY), torch.empty_like(W)


def _setup_context(ctx, inputs, output):
    _, _, W, _, ctx.offset, ctx.casting_mode = inputs
    _, S, RSTD = output
    ctx.save_for_backward(S, W, RSTD)


def _backward(ctx, dY, dS_out, _):  # RSTD is a statistic: no gradient
    S, W, RSTD = ctx.saved_tensors
    dX, dR, dW = fused_add_rms_norm_backward(dY, dS_out, S, W, RSTD, ctx.offset, ctx.casting_mode)
    return dX, dR, dW, None, None, None


fused_add_rms_norm.register_autograd(_backward, setup_context=_setup_context)

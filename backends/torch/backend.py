"""PyTorch adapters: `torch` (eager, autograd) and `torch_compile` (the fused add+norm through torch.compile).

The model code lives in torch/blocks.py; this file only moves arrays across the adapter border (float64
NumPy in, cast to the dtype on the device, float64 NumPy out) and asks autograd for the VJPs.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch

from resconf.backends import contract
from resconf.backends.base import (BENCH_EPS, Backend, Capabilities, DeviceUnavailable, FusedGrads, StackGrads,
                                   StackTrace)
from resconf.backends.config import FEATURES, FUSED_KINDS, BlockConfig
from resconf.backends.dtypes import claims
from resconf.backends.fused_args import residual_dtype
from resconf.backends.params import LayerParams
from resconf.backends.torch.blocks import ADD_NORMS, Stack, build_stack, grads_as_params, output
from resconf.backends.torch.dtypes import TORCH_DTYPES, to_numpy, to_tensor, torch_dtype
from resconf.backends.torch import modes as torch_modes
from resconf.backends.torch.tp import TorchTensorParallel


AddNorm = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def require_torch_device(backend: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"backend {backend!r}: device 'cuda' asked for, but torch "
                                f"{torch.__version__} sees no CUDA device; use device='cpu'")


class TorchBackend(TorchTensorParallel, Backend):
    """Eager PyTorch: nn.LayerNorm / nn.RMSNorm / nn.Linear / F.gelu, F.relu, F.silu /
    F.scaled_dot_product_attention; every layer-model feature (config.FEATURES); tensor-parallel layers on
    2 or 4 gloo processes (CPU, torch/tp.py)."""

    name = "torch"
    devices = ("cpu", "cuda")

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        require_torch_device(self.name, device)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(features=frozenset(FEATURES), dtypes=self._device_dtypes(),
                            fused_kinds=frozenset(FUSED_KINDS),
                            tensor_parallel=frozenset({2, 4}) if self.device == "cpu" else frozenset(),
                            modes=torch_modes.CUDA_MODES if self.device == "cuda" else torch_modes.MODES)

    def _device_dtypes(self) -> frozenset[str]:
        # Checked on torch 2.13 CPU: SDPA (enable_gqa too), rms_norm, layer_norm, gelu, relu and silu run
        # forward and backward in float16 and bfloat16.
        if self.device == "cuda" and not torch.cuda.is_bf16_supported():
            return claims("float64", "float32", "float16")
        return claims("float64", "float32", "bfloat16", "float16")

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    # --- blocks ---
    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        td = torch_dtype(dtype)
        stack = self._build(cfg, params, td)
        with torch.no_grad():
            states, writes, final = torch_modes.run_stack(stack, self._tensor(x, td), self.mode)
        return StackTrace(states=to_numpy(torch.stack(states)), writes=to_numpy(_stack_or_empty(writes, states[0])),
                          final=None if final is None else to_numpy(final))

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        td = torch_dtype(dtype)
        stack = self._build(cfg, params, td)
        x0 = self._tensor(x, td).requires_grad_()
        states, _, final = torch_modes.run_stack(stack, x0, self.mode)
        named = dict(stack.named_parameters())
        with torch_modes.grad_context(self.mode, self.device):
            dx, *dweights = torch.autograd.grad(output(states, final), [x0, *named.values()], self._tensor(g, td),
                                                allow_unused=True)
        dparams = grads_as_params(cfg, params, stack, dict(zip(named, dweights)))
        return StackGrads(dx=to_numpy(_or_zeros(dx, x0)), dparams=dparams)

    def _build(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: torch.dtype) -> Stack:
        """The stack of params for a case in `dtype`, its parameters in the mode's dtype (torch/modes.py)."""
        return build_stack(cfg, params, torch_modes.parameter_dtype(self.mode, dtype), self.device)

    # --- fused add+norm ---
    def _add_norm(self, kind: str, with_bias: bool, residual_in_fp32: bool) -> AddNorm:
        """The add+norm function to run: the plain composition, compiled in compile mode."""
        if self.mode == "compile":
            return _compiled_add_norm(kind)
        return ADD_NORMS[kind]

    def _fused_add_norm(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                        eps: float, kind: str, dtype: str, residual_in_fp32: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        leaves = self._fused_leaves(x, residual, weight, bias, dtype, residual_in_fp32, requires_grad=False)
        with torch.no_grad():
            out, new_residual = self._add_norm(kind, bias is not None, residual_in_fp32)(
                *leaves, eps, _residual_dtype(dtype, residual_in_fp32))
        return to_numpy(out), to_numpy(new_residual)

    def _fused_add_norm_vjp(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                            eps: float, kind: str, dtype: str, g_out: np.ndarray, g_residual: np.ndarray,
                            residual_in_fp32: bool = False) -> FusedGrads:
        leaves = self._fused_leaves(x, residual, weight, bias, dtype, residual_in_fp32, requires_grad=True)
        residual_dtype = _residual_dtype(dtype, residual_in_fp32)
        out, new_residual = self._add_norm(kind, bias is not None, residual_in_fp32)(*leaves, eps, residual_dtype)
        cotangents = (self._tensor(g_out, torch_dtype(dtype)), self._tensor(g_residual, residual_dtype))
        present = [t for t in leaves if t is not None]
        grads = torch.autograd.grad((out, new_residual), present, cotangents, allow_unused=True)
        dx, dresidual, dweight, *dbias = [to_numpy(_or_zeros(d, t)) for d, t in zip(grads, present)]
        return FusedGrads(dx=dx, dresidual=dresidual, dweight=dweight, dbias=dbias[0] if dbias else None)

    def _fused_leaves(self, x, residual, weight, bias, dtype: str, residual_in_fp32: bool,
                      requires_grad: bool) -> list[torch.Tensor | None]:
        """[x, residual, weight, bias] as tensors. torch broadcasts a (1, C) residual silently, so the
        adapter's own guard rejects it here (BI-1 calls this hook directly). The residual comes in the wider
        of dtype and the residual dtype, so that no input is rounded before the add."""
        contract.check_fused_shapes(x, residual, weight, bias)
        td = torch_dtype(dtype)
        wide = torch.promote_types(td, _residual_dtype(dtype, residual_in_fp32))
        leaves = [self._tensor(x, td), self._tensor(residual, wide), self._tensor(weight, td),
                  None if bias is None else self._tensor(bias, td)]
        return [t.requires_grad_() if requires_grad and t is not None else t for t in leaves]

    # --- benchmark hooks ---
    def to_native(self, a: np.ndarray, dtype: str) -> torch.Tensor:
        return self._tensor(a, self._dtype(dtype))

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        """f(x, residual, weight, bias, g_out) on to_native tensors, residual in `dtype`, eps BENCH_EPS.

        Forward only: under no_grad, returns (out, new_residual). With backward: makes grad-requiring
        views of the inputs (detach() copies nothing), runs forward and autograd backward of <g_out, out>,
        returns (dx, dresidual, dweight[, dbias]). Call it once in the benchmark's setup on the real
        inputs: that is when torch.compile compiles (once per shape and dtype, with dynamic=False).
        """
        contract.check_bench_fused(self, kind, dtype)
        add_norm = self._add_norm(kind, with_bias, False)

        def forward(x, residual, weight, bias, g_out):
            with torch.no_grad():
                return add_norm(x, residual, weight, bias if with_bias else None, BENCH_EPS, residual.dtype)

        def forward_backward(x, residual, weight, bias, g_out):
            leaves = [t.detach().requires_grad_() for t in (x, residual, weight, bias if with_bias else None)
                      if t is not None]
            out, _ = add_norm(*leaves[:3], leaves[3] if with_bias else None, BENCH_EPS, residual.dtype)
            return torch.autograd.grad(out, leaves, g_out)

        return forward_backward if backward else forward

    def bench_stack(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """f(x, g): the stack forward and the backward of <g, output> to x_0 and every parameter; returns the
        gradients (x_0's first)."""
        contract.check_blocks(self, cfg)
        stack = build_stack(cfg, params, self._dtype(dtype), self.device)
        weights = list(stack.parameters())

        def forward_backward(x, g):
            x = x.detach().requires_grad_()
            states, _, final = stack(x)
            return torch.autograd.grad(output(states, final), [x, *weights], g, allow_unused=True)

        return forward_backward

    def bench_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """f(x): the stack forward under no_grad; returns its output."""
        contract.check_blocks(self, cfg)
        stack = build_stack(cfg, params, self._dtype(dtype), self.device)

        def forward(x):
            with torch.no_grad():
                states, _, final = stack(x)
                return output(states, final)

        return forward

    def synchronize(self, result) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # --- conversions ---
    def _dtype(self, name: str) -> torch.dtype:
        contract.check_dtype(self, name)
        return TORCH_DTYPES[name]

    def _tensor(self, a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return to_tensor(a, dtype, self.device)


class TorchCompileBackend(TorchBackend):
    """The fused add+norm composition compiled by torch.compile (Inductor). Blocks are not claimed:
    compiling every block configuration (~23 s for a first call here) is too slow for per-example tests."""

    name = "torch_compile"
    RECOMPILE_LIMIT = 256  # dynamo's default (8) would silently fall back to eager after 8 shapes or dtypes

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self._compiled: dict[tuple[str, bool, bool], AddNorm] = {}

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(dtypes=self._device_dtypes(), fused_kinds=frozenset(FUSED_KINDS), blocks=False)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "torch_compile": "inductor, dynamic=False"}

    def _add_norm(self, kind: str, with_bias: bool, residual_in_fp32: bool) -> AddNorm:
        key = (kind, with_bias, residual_in_fp32)
        if key not in self._compiled:
            self._compiled[key] = _loud_recompiles(torch.compile(ADD_NORMS[kind], dynamic=False),
                                                   self.RECOMPILE_LIMIT)
        return self._compiled[key]



def _loud_recompiles(fn: AddNorm, limit: int) -> AddNorm:
    """fn with dynamo's recompile limit raised, and an error (not a silent eager fallback) past it.

    Patching dynamo's config costs ~50 us, which would show in small benchmarks, so only calls with an
    argument signature not seen before (the ones that may compile) pay it.
    """
    seen: set[tuple] = set()

    @functools.wraps(fn)
    def call(x, residual, weight, bias, eps, residual_dtype):
        signature = (x.shape, x.dtype, x.device, residual.dtype, weight.dtype, bias is None, eps, residual_dtype,
                     torch.is_grad_enabled(), x.requires_grad)
        if signature in seen:
            return fn(x, residual, weight, bias, eps, residual_dtype)
        with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
            out = fn(x, residual, weight, bias, eps, residual_dtype)
        seen.add(signature)
        return out
    return call


@functools.cache
def _compiled_add_norm(kind: str) -> AddNorm:
    """The composition compiled once per kind for every shape (dynamic=True), loud past the recompile limit."""
    return _loud_recompiles(torch.compile(ADD_NORMS[kind], dynamic=True), torch_modes.RECOMPILE_LIMIT)


def _residual_dtype(dtype: str, residual_in_fp32: bool) -> torch.dtype:
    """The dtype the new residual is rounded to (backends.fused_args.residual_dtype), as a torch dtype."""
    return TORCH_DTYPES[residual_dtype(dtype, residual_in_fp32)]


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """autograd gives None for an input the output does not depend on; the API wants zeros."""
    return torch.zeros_like(like) if grad is None else grad


def _stack_or_empty(ts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(ts) if ts else like.new_empty((0, *like.shape))


"""Liger-Kernel's add + norm kernels (liger_kernel.ops), under the fused add+norm contract (SPEC XB-3).

kind "rmsnorm": Liger's fused add + RMSNorm, LigerFusedAddRMSNormFunction (one kernel: s = x + residual,
stored, then RMSNorm of s), forward and backward through its torch.autograd.Function; offset 0.0 (the
suite's gain is the weight itself; Gemma's (1 + w) would be offset 1.0).
kind "layernorm": Liger has no fused add + LayerNorm. The add is a separate torch op here, NOT fused,
followed by Liger's LayerNorm kernel (LigerLayerNormFunction): the numbers are Liger's LayerNorm, the
memory traffic is that of two kernels (benchmarks show it as such).

Glue of ours, where Liger's kernels take less than the contract asks (each one torch op, named here):
  - a bias on RMSNorm: Liger's RMSNorm has none; it is added to Liger's output in the dtype (one rounding);
  - no bias on LayerNorm: Liger's LayerNorm always reads one; it gets zeros (y + 0 is exact);
  - residual_in_fp32 on RMSNorm: Liger's kernel allocates the new residual in x's dtype, so a float32
    residual comes back rounded to x's dtype (XB-3 expects float32): not hidden, an expected failure
    (conformance/xfails/liger.toml); its cotangent is passed in that dtype too, as Liger's autograd requires.
    For LayerNorm the add is ours and keeps float32.

Casting modes of Liger's RMSNorm (casting_mode=...; the suite's dtype rule is "each operation in float32,
rounded once to the dtype", which is what "gemma" does):
  "llama" (Liger's default): s in x's dtype, rstd in float32, s * rstd rounded to the dtype, then times the
          weight in the dtype (a second rounding; HF Llama's order);
  "gemma": s and the weight upcast, everything in float32, the output rounded once;
  "none":  s * s summed in the dtype, eps and rstd in the dtype (rstd stored in the dtype).
In float32 the three are the same computation.

In place: the forward writes new tensors (x and residual are read only); the backward with in_place=True,
the default of liger_kernel.transformers.functional.liger_fused_add_rms_norm, writes dx over the upstream
gradient dy (the caller's cotangent tensor). The adapter uses in_place=False, the default of
LigerFusedAddRMSNorm (the nn.Module); tests/test_liger.py measures both.

device="cuda": the kernels compiled for the GPU. device="cpu": Triton's interpreter, which needs
TRITON_INTERPRET=1 in the environment before triton is imported, and two interpreter gaps bridged per
call (backends/kernels/liger_interpret.py); bfloat16 is not claimed there (the interpreter's bfloat16 arithmetic
works on the raw bits).
"""
from __future__ import annotations

import importlib

import numpy as np
import torch
import triton

from resconf.backends import contract
from resconf.backends.base import BENCH_EPS, Backend, Capabilities, DeviceUnavailable, FusedGrads, OpCall
from resconf.backends.config import FUSED_KINDS
from resconf.backends.dtypes import claims
from resconf.backends.fused_args import residual_dtype
from resconf.backends.torch.dtypes import to_numpy, torch_dtype

CASTING_MODES = ("llama", "gemma", "none")
GPU_DTYPES = claims("float32", "bfloat16", "float16")
CPU_DTYPES = claims("float32", "float16")  # no bfloat16 in Triton 3.9's interpreter (backends/kernels/liger_interpret.py)


def _load_ops(device: str):
    """(fused add+RMSNorm module, LayerNorm module, interpreter bridge or None), checked for the device."""
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("liger on device 'cuda' needs a CUDA GPU and a CUDA build of torch; none found "
                                "(for a CPU check, set TRITON_INTERPRET=1 before starting and use device 'cpu')")
    rms = importlib.import_module("liger_kernel.ops.fused_add_rms_norm")
    layer = importlib.import_module("liger_kernel.ops.layer_norm")
    from resconf.backends.kernels import liger_interpret as liger_interpret
    if device == "cpu":
        liger_interpret.check_interpreted(rms._fused_add_rms_norm_forward_kernel, "liger")
        return rms, layer, liger_interpret
    if liger_interpret.active():
        raise ValueError("liger on device 'cuda': TRITON_INTERPRET=1 is set, so its kernels are interpreted on the "
                         "CPU, not compiled for the GPU; unset it for 'cuda', or use device 'cpu'")
    return rms, layer, None


class LigerFusedBackend(Backend):
    name = "liger"
    devices = ("cuda", "cpu")
    casting_mode = "llama"  # Liger's default (LigerFusedAddRMSNorm, liger_fused_add_rms_norm)

    def __init__(self, device: str = "cuda", casting_mode: str | None = None) -> None:
        super().__init__(device)
        mode = casting_mode or self.casting_mode
        if mode not in CASTING_MODES:
            raise ValueError(f"casting_mode={mode!r} is not one of Liger's {CASTING_MODES}")
        self.casting_mode = mode
        self.rms_ops, self.layer_ops, self.interpreter = _load_ops(device)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(placements=frozenset(), norms=frozenset(), branches=frozenset(),
                            dtypes=CPU_DTYPES if self.device == "cpu" else GPU_DTYPES,
                            fused_kinds=frozenset(FUSED_KINDS), blocks=False)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version
        return {"liger_kernel": version("liger-kernel"), "triton": triton.__version__, "torch": torch.__version__}

    def _bridge(self):
        """Interpreter gaps bridged for the duration of a call on the CPU (a no-op context on cuda)."""
        return self.interpreter.bridged(self.rms_ops, self.layer_ops) if self.interpreter else _NoBridge()

    def _tensor(self, a: np.ndarray, dtype: str, grad: bool = False) -> torch.Tensor:
        """float64 values representable in dtype -> a tensor in dtype on our device (exact)."""
        t = torch.from_numpy(np.ascontiguousarray(a, np.float64)).to(self.device, torch_dtype(dtype))
        return t.requires_grad_(grad)

    def _graph(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32, grad):
        """Inputs (as tensors) and the (out, new_residual) they give, with autograd recording when `grad`."""
        contract.check_fused_shapes(x, residual, weight, bias)  # Liger's kernels would read past a short residual
        shape, C = x.shape, x.shape[-1]
        res_name = residual_dtype(dtype, residual_in_fp32)  # the incoming residual is already in that dtype
        inputs = [self._tensor(x.reshape(-1, C), dtype, grad), self._tensor(residual.reshape(-1, C), res_name, grad),
                  self._tensor(weight, dtype, grad)]
        if bias is not None:
            inputs.append(self._tensor(bias, dtype, grad))
        out, new_residual = self._apply(kind, *inputs[:3], inputs[3] if bias is not None else None, eps)
        return inputs, out, new_residual, shape

    def _apply(self, kind, x, residual, weight, bias, eps):
        """(out, new_residual) from tensors: Liger's kernels plus the glue named in the module docstring."""
        with self._bridge():
            if kind == "rmsnorm":
                y, s = self.rms_ops.LigerFusedAddRMSNormFunction.apply(x, residual, weight, eps, 0.0,
                                                                       self.casting_mode, False)
                return (y if bias is None else y + bias), s
            s = x.to(residual.dtype) + residual  # NOT fused: Liger has no fused add + LayerNorm
            b = bias if bias is not None else torch.zeros_like(weight)
            y = self.layer_ops.LigerLayerNormFunction.apply(s, weight, b, eps)
            return y.to(x.dtype), s

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        with torch.no_grad():
            _, out, new_residual, shape = self._graph(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32,
                                                      grad=False)
        return _numpy(out, shape), _numpy(new_residual, shape)

    def _fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                            residual_in_fp32=False) -> FusedGrads:
        contract.check_fused_shapes(x, residual, weight, bias, ("g_out", g_out), ("g_residual", g_residual))
        inputs, out, new_residual, shape = self._graph(x, residual, weight, bias, eps, kind, dtype,
                                                       residual_in_fp32, grad=True)
        C = shape[-1]
        g = self._tensor(g_out.reshape(-1, C), dtype)
        g_res = self._tensor(g_residual.reshape(-1, C), residual_dtype(dtype, residual_in_fp32))
        with self._bridge():
            grads = torch.autograd.grad([out, new_residual], inputs, [g, g_res.to(new_residual.dtype)])
        dx, dres, dw = grads[:3]
        return FusedGrads(dx=_numpy(dx, shape), dresidual=_numpy(dres, shape), dweight=_numpy(dw, weight.shape),
                          dbias=_numpy(grads[3], weight.shape) if bias is not None else None)

    def _fused_add_norm_ops(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        """Liger's fused add + RMSNorm as the op we wrap it in (liger_op.py); no op for LayerNorm (not fused)."""
        if kind != "rmsnorm":
            return ()
        from resconf.backends.kernels import liger_op  # imports liger_kernel: after _load_ops' checks
        args = [self._tensor(a, d, grad=True)
                for a, d in ((x, dtype), (residual, residual_dtype(dtype, residual_in_fp32)), (weight, dtype))]
        return (OpCall(liger_op.fused_add_rms_norm, (*args, eps, 0.0, self.casting_mode)),)

    # --- benchmark hooks: torch tensors on our device ---
    def to_native(self, a: np.ndarray, dtype: str) -> torch.Tensor:
        contract.check_dtype(self, dtype)
        return self._tensor(a, dtype)

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        """f(x, residual, weight, bias, g_out) -> outputs, on tensors from to_native, through Liger's autograd
        Functions (the backward as torch.autograd.grad, no cotangent on the new residual). For "layernorm"
        it times the separate torch add too: that is what running Liger's LayerNorm after an add costs."""
        contract.check_bench_fused(self, kind, dtype)

        def run(x, residual, weight, bias, g_out):
            b = bias if with_bias else None
            if not backward:
                with torch.no_grad():
                    return self._apply(kind, x, residual, weight, b, BENCH_EPS)
            inputs = [t.detach().requires_grad_() for t in (x, residual, weight) + ((b,) if with_bias else ())]
            out, new_residual = self._apply(kind, *inputs[:3], inputs[3] if with_bias else None, BENCH_EPS)
            with self._bridge():
                return (out, new_residual) + torch.autograd.grad(out, inputs, g_out)
        return run

    def synchronize(self, result) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class LigerGemmaBackend(LigerFusedBackend):
    """Liger's RMSNorm in casting mode "gemma" (everything in float32): resconf.backends.kernels.liger_fused:LigerGemmaBackend."""
    name = "liger_gemma"
    casting_mode = "gemma"


class LigerNoneBackend(LigerFusedBackend):
    """Liger's RMSNorm in casting mode "none" (the dtype throughout): resconf.backends.kernels.liger_fused:LigerNoneBackend."""
    name = "liger_none"
    casting_mode = "none"


class _NoBridge:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _numpy(t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Exact upcast to float64 NumPy in the caller's shape."""
    return to_numpy(t).reshape(shape)

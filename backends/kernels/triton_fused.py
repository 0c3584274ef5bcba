"""Fused add + RMSNorm / LayerNorm on CUDA GPUs, as our own Triton kernels (backends/kernels/triton_kernels.py).

device="cuda" compiles the kernels for the GPU. device="cpu" runs them in Triton's interpreter, which is
how the tests check them on a machine without a GPU; it needs TRITON_INTERPRET=1 in the environment
before the kernels module is first imported, because triton.jit picks compile or interpret there.

fused_add_norm and its VJP call the kernels through the torch op they are registered as (triton_op.py), the
VJP through torch autograd, so what XB-3 checks is what opcheck (XB-8) checks. The benchmark hooks launch the
kernels directly.
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import torch
import triton

from resconf.backends import contract
from resconf.backends.base import BENCH_EPS, Backend, Capabilities, DeviceUnavailable, FusedGrads, OpCall
from resconf.backends.config import FUSED_KINDS
from resconf.backends.dtypes import claims
from resconf.backends.fused_args import residual_dtype
from resconf.backends.kernels import triton_op
from resconf.backends.torch.dtypes import to_numpy, torch_dtype

KERNELS_MODULE = triton_op.KERNELS_MODULE


def _load_kernels(device: str):
    """The kernels module, checked to be compiled for cuda or interpreted for cpu (with the fix if not)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device == "cpu" and not interpret:
        raise ValueError("triton_fused on device 'cpu' runs Triton's interpreter: set TRITON_INTERPRET=1 in the "
                         "environment (before backends.triton_kernels is imported), or use device 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("triton_fused on device 'cuda' needs a CUDA GPU and a CUDA build of torch; none found "
                         "(for a CPU check, set TRITON_INTERPRET=1 and use device 'cpu')")
    kernels = importlib.import_module(KERNELS_MODULE)
    if kernels.INTERPRETED != (device == "cpu"):
        mode = "interpreted" if kernels.INTERPRETED else "compiled"
        raise ValueError(f"{KERNELS_MODULE} was imported {mode} (TRITON_INTERPRET was "
                         f"{'set' if kernels.INTERPRETED else 'unset'} then), which does not fit device "
                         f"{device!r}: set TRITON_INTERPRET=1 only for 'cpu', before the first import, or drop "
                         f"sys.modules[{KERNELS_MODULE!r}] to import it again")
    return kernels


class TritonFusedBackend(Backend):
    name = "triton_fused"
    devices = ("cuda", "cpu")
    op = triton_op.fused_add_norm  # tests/opcheck_mutants.py swaps in one with a wrong fake kernel

    def __init__(self, device: str = "cuda") -> None:
        super().__init__(device)
        self.kernels = _load_kernels(device)
        self.max_block = self.kernels.MAX_BLOCK  # tests lower it to exercise the multi-block loop

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(placements=frozenset(), norms=frozenset(), branches=frozenset(),
                            dtypes=claims("float32", "bfloat16", "float16"), fused_kinds=frozenset(FUSED_KINDS),
                            blocks=False)

    def versions(self) -> dict[str, str]:
        return {"triton": triton.__version__, "torch": torch.__version__}

    def _tensor(self, a: np.ndarray, dtype: str) -> torch.Tensor:
        """float64 values representable in dtype -> a tensor in dtype on our device (exact)."""
        return torch.from_numpy(np.ascontiguousarray(a, np.float64)).to(self.device, torch_dtype(dtype))

    def _inputs(self, x, residual, weight, bias, dtype, residual_in_fp32, grad=False):
        """[x, residual, weight, bias or None] as tensors; the residual in its dtype (float32 for residual_in_fp32)."""
        contract.check_fused_shapes(x, residual, weight, bias)  # the kernel would read past a short residual
        dtypes = (dtype, residual_dtype(dtype, residual_in_fp32), dtype, dtype)
        return [None if a is None else self._tensor(a, d).requires_grad_(grad)
                for a, d in zip((x, residual, weight, bias), dtypes)]

    def _call(self, inputs, eps, kind):
        """(out, new_residual, mean, rstd) from the registered op."""
        return self.op(*inputs, eps, kind == "rmsnorm", self.max_block)

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        out, new_residual, _, _ = self._call(self._inputs(x, residual, weight, bias, dtype, residual_in_fp32), eps, kind)
        return _numpy(out, x.shape), _numpy(new_residual, x.shape)

    def _fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                            residual_in_fp32=False) -> FusedGrads:
        contract.check_fused_shapes(x, residual, weight, bias, ("g_out", g_out), ("g_residual", g_residual))
        inputs = self._inputs(x, residual, weight, bias, dtype, residual_in_fp32, grad=True)
        out, new_residual, _, _ = self._call(inputs, eps, kind)
        cotangents = [self._tensor(g_out, dtype), self._tensor(g_residual, residual_dtype(dtype, residual_in_fp32))]
        grads = torch.autograd.grad([out, new_residual], [t for t in inputs if t is not None], cotangents)
        return FusedGrads(dx=_numpy(grads[0], x.shape), dresidual=_numpy(grads[1], x.shape),
                          dweight=_numpy(grads[2], weight.shape),
                          dbias=None if bias is None else _numpy(grads[3], weight.shape))

    def _fused_add_norm_ops(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        inputs = self._inputs(x, residual, weight, bias, dtype, residual_in_fp32, grad=True)
        return (OpCall(self.op, (*inputs, eps, kind == "rmsnorm", self.max_block)),)

    # --- benchmark hooks: torch tensors on our device ---
    def to_native(self, a: np.ndarray, dtype: str) -> torch.Tensor:
        contract.check_dtype(self, dtype)
        return self._tensor(a, dtype)

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        """f(x, residual, weight, bias, g_out) -> outputs, on tensors from to_native.

        Triton compiles per hidden size (BLOCK is a compile-time constant): call f once with the timed
        shape before timing. The backward has no cotangent on the residual output, and returns one tensor
        for dx and dresidual (the same numbers).
        """
        contract.check_bench_fused(self, kind, dtype)
        k, rms, max_block = self.kernels, kind == "rmsnorm", self.max_block

        def run(x, residual, weight, bias, g_out):
            b = bias if with_bias else None
            fwd = k.add_norm_forward(x, residual, weight, b, BENCH_EPS, rms, x.dtype, max_block)
            if not backward:
                return fwd.out, fwd.new_residual
            return (fwd.out, fwd.new_residual) + k.add_norm_backward(g_out, None, fwd, weight, with_bias, rms,
                                                                     x.dtype, max_block)
        return run

    def synchronize(self, result) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def _numpy(t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Exact upcast to float64 NumPy in the caller's shape."""
    return to_numpy(t).reshape(shape)


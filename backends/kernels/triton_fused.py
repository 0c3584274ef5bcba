"""Fused add + RMSNorm / LayerNorm on CUDA GPUs, as our own Triton kernels (backends/kernels/triton_kernels.py).

device="cuda" compiles the kernels for the GPU. device="cpu" runs them in Triton's interpreter, which is
how the tests check them on a machine without a GPU; it needs TRITON_INTERPRET=1 in the environment
before the kernels module is first imported, because triton.jit picks compile or interpret there.
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import torch
import triton

from resconf.backends import contract
from resconf.backends.base import BENCH_EPS, Backend, Capabilities, DeviceUnavailable, FusedGrads
from resconf.backends.config import FUSED_KINDS
from resconf.backends.dtypes import claims
from resconf.backends.fused_args import residual_dtype
from resconf.backends.torch.dtypes import to_numpy, torch_dtype
KERNELS_MODULE = "resconf.backends.kernels.triton_kernels"


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

    def _forward(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32):
        contract.check_fused_shapes(x, residual, weight, bias)  # the kernel would read past a short residual
        w = self._tensor(weight, dtype)
        res_name = residual_dtype(dtype, residual_in_fp32)  # the incoming residual is already in that dtype
        res_dtype = torch_dtype(res_name)
        fwd = self.kernels.add_norm_forward(self._tensor(x, dtype), self._tensor(residual, res_name), w,
                                            None if bias is None else self._tensor(bias, dtype), eps,
                                            kind == "rmsnorm", res_dtype, self.max_block)
        return w, fwd

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        _, fwd = self._forward(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
        return _numpy(fwd.out, x.shape), _numpy(fwd.new_residual, x.shape)

    def _fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                            residual_in_fp32=False) -> FusedGrads:
        contract.check_fused_shapes(x, residual, weight, bias, ("g_out", g_out), ("g_residual", g_residual))
        w, fwd = self._forward(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
        dx, dres, dw, db = self.kernels.add_norm_backward(
            self._tensor(g_out, dtype), self._tensor(g_residual, residual_dtype(dtype, residual_in_fp32)), fwd, w,
            bias is not None,
            kind == "rmsnorm", torch_dtype(dtype), self.max_block)
        return FusedGrads(dx=_numpy(dx, x.shape), dresidual=_numpy(dres, x.shape).copy(),
                          dweight=_numpy(dw, weight.shape), dbias=None if db is None else _numpy(db, weight.shape))

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


"""The adapter API's calling contract, one check per rule and one wording per error: what was wrong and what
was expected. `Backend`'s public methods run these before calling an adapter's hooks (backends/base.py), so
no adapter writes them again. An adapter whose own layer would broadcast or misread a bad shape (NumPy, jnp,
torch and the Triton kernels all broadcast a (1, C) residual) also calls `check_fused_shapes` in its hook:
that is the subject's own guard, which the BI family calls directly (docs/spec.md, BI)."""
from __future__ import annotations

import numpy as np

from resconf.backends import tensor_parallel as tp
from resconf.backends.config import FUSED_KINDS, BlockConfig


def dtype_error(backend, dtype: str) -> ValueError:
    return ValueError(f"backend {backend.name!r} on {backend.device} does not claim dtype {dtype!r}; "
                      f"it claims {sorted(backend.capabilities.dtypes)}")


def check_dtype(backend, dtype: str) -> None:
    if dtype not in backend.capabilities.dtypes:
        raise dtype_error(backend, dtype)


def check_blocks(backend, cfg: BlockConfig) -> None:
    """Blocks claimed at all (else NotImplementedError, as for a method not implemented), and cfg claimed."""
    caps = backend.capabilities
    if not caps.blocks:
        raise NotImplementedError(f"backend {backend.name!r} offers fused add+norm only (capabilities.blocks is False)")
    reason = caps.why_not(cfg)
    if reason is not None:
        raise ValueError(f"backend {backend.name!r} {reason}: cannot run {cfg.describe()}")


def check_stream(cfg: BlockConfig, x: np.ndarray) -> None:
    if np.ndim(x) != 3 or np.shape(x)[-1] != cfg.d_model:
        raise ValueError(f"x has shape {np.shape(x)}; expected (B, T, {cfg.d_model}) for d_model={cfg.d_model}")


def check_same_shape(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    """No silent broadcasting: a (1, C) residual against an (N, C) x is an error (SPEC BI-1)."""
    if np.shape(a) != np.shape(ref):
        raise ValueError(f"{name} has shape {np.shape(a)} but {ref_name} has shape {np.shape(ref)}; "
                         f"expected the same shape (no broadcasting)")


def check_stack_call(backend, cfg: BlockConfig, x: np.ndarray, g: np.ndarray | None, dtype: str) -> None:
    """stack_forward (g None) and stack_vjp: the claim, then x (B, T, d_model) and g of x's shape."""
    check_dtype(backend, dtype)
    check_blocks(backend, cfg)
    check_stream(cfg, x)
    if g is not None:
        check_same_shape("g", g, "x", x)


def check_tp_call(backend, cfg: BlockConfig, x: np.ndarray, g: np.ndarray | None, dtype: str, ranks: int) -> None:
    """tp_stack_forward / tp_stack_vjp: the rank count claimed and cfg splittable over it, then as a stack."""
    claimed = backend.capabilities.tensor_parallel
    if not claimed:
        raise NotImplementedError(f"backend {backend.name!r} does not implement tensor-parallel layers")
    if ranks not in claimed:
        raise ValueError(f"backend {backend.name!r} claims tensor-parallel rank counts {sorted(claimed)}, not {ranks}")
    tp.check(cfg, ranks)
    check_stack_call(backend, cfg, x, g, dtype)


def check_fused_kind(backend, kind: str) -> None:
    claimed = backend.capabilities.fused_kinds
    if not claimed:
        raise NotImplementedError(f"backend {backend.name!r} does not implement fused_add_norm")
    if kind not in claimed:
        raise ValueError(f"backend {backend.name!r} does not claim fused kind {kind!r}; it claims {sorted(claimed)}")


def check_fused_shapes(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                       *cotangents: tuple[str, np.ndarray]) -> None:
    """residual (and each named cotangent) exactly x's shape, weight and bias (C,): what a kernel would
    otherwise broadcast or misread (SPEC BI-1)."""
    if np.ndim(x) < 1:
        raise ValueError(f"x has shape {np.shape(x)}; expected a hidden axis, (..., C)")
    for name, a in (("residual", residual), *cotangents):
        check_same_shape(name, a, "x", x)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and np.shape(t) != np.shape(x)[-1:]:
            raise ValueError(f"{name} has shape {np.shape(t)} but x has shape {np.shape(x)}; "
                             f"expected {np.shape(x)[-1:]}, one value per feature")


def check_fused_call(backend, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                     eps: float, kind: str, dtype: str, *cotangents: tuple[str, np.ndarray]) -> None:
    """fused_add_norm / fused_add_norm_vjp: kind and dtype claimed, eps > 0, the shapes."""
    check_fused_kind(backend, kind)
    if kind not in FUSED_KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {FUSED_KINDS}")
    check_dtype(backend, dtype)
    if not eps > 0:
        raise ValueError(f"eps={eps}; expected eps > 0")
    check_fused_shapes(x, residual, weight, bias, *cotangents)


def check_bench_fused(backend, kind: str, dtype: str) -> None:
    """A benchmark of what is not claimed is skipped, not failed: asv skips on NotImplementedError."""
    try:
        check_fused_kind(backend, kind)
        check_dtype(backend, dtype)
    except ValueError as exc:
        raise NotImplementedError(str(exc)) from None

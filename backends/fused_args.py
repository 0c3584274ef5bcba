"""The fused add+norm contract's shared pieces: the residual dtype, and the argument checks that
reject, naming both shapes, what a kernel would otherwise broadcast or misread (SPEC BI-1)."""
from __future__ import annotations

import numpy as np

from resconf.backends.config import FUSED_KINDS


def residual_dtype(dtype: str, residual_in_fp32: bool) -> str:
    """The dtype the fused add+norm's new residual is kept in (SPEC XB-3): float32 when residual_in_fp32,
    else the compute dtype."""
    return "float32" if residual_in_fp32 else dtype


def check_fused_args(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                     eps: float, kind: str) -> None:
    if kind not in FUSED_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {FUSED_KINDS}")
    if not eps > 0:
        raise ValueError(f"eps={eps} must be > 0")
    if x.ndim < 1:
        raise ValueError(f"x must have a hidden axis, got shape {x.shape}")
    if residual.shape != x.shape:
        raise ValueError(f"residual shape {residual.shape} != x shape {x.shape}; pass a full residual, "
                         f"no broadcasting")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != x.shape[-1:]:
            raise ValueError(f"{name} shape {t.shape} != (hidden,) = {x.shape[-1:]} of x shape {x.shape}")

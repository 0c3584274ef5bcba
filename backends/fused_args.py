"""The fused add+norm's residual dtype rule, shared by the suite and every adapter (the argument checks are
in backends/contract.py)."""
from __future__ import annotations


def residual_dtype(dtype: str, residual_in_fp32: bool) -> str:
    """The dtype the fused add+norm's new residual is kept in (SPEC XB-3): float32 when residual_in_fp32,
    else the compute dtype."""
    return "float32" if residual_in_fp32 else dtype

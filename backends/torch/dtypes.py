"""The one table of torch dtypes and the conversions every torch adapter shares: float64 NumPy in, a tensor
of the asked dtype on the device (exact: the suite hands representable values), float64 NumPy out."""
from __future__ import annotations

import numpy as np
import torch

from resconf.backends.dtypes import DTYPES, dtype_info

# The suite's name -> torch's, for every suite dtype torch has (float8 names differ: float8_e4m3 -> float8_e4m3fn).
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES if hasattr(torch, name)}


def torch_dtype(name: str) -> torch.dtype:
    dtype_info(name)  # an unknown name gets the suite's one error
    if name not in TORCH_DTYPES:
        raise ValueError(f"dtype {name!r} has no torch type; torch has {sorted(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def to_tensor(a: np.ndarray, dtype: str | torch.dtype, device: str = "cpu") -> torch.Tensor:
    """a on `device` in `dtype`; torch.tensor copies, so strided or negative-stride views arrive contiguous."""
    td = dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)
    return torch.tensor(np.asarray(a, dtype=np.float64), device=device).to(td)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float64 NumPy on the host; the upcast is exact."""
    return t.detach().to("cpu", torch.float64).numpy()

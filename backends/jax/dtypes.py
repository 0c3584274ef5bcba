"""The JAX side of the dtype record: jnp takes the NumPy / ml_dtypes types of backends/dtypes.py as they are,
so the table is that record; these are the two conversions every JAX adapter shares (float64 NumPy in, an
array of the asked dtype on the device; float64 NumPy out, exact)."""
from __future__ import annotations

import jax
import numpy as np

from resconf.backends.dtypes import numpy_dtype
from resconf.backends.fused_args import residual_dtype


def to_jax(a: np.ndarray, dtype: str, device=None) -> jax.Array:
    """a in `dtype` (exact: the suite hands representable values) on `device` (None: JAX's default)."""
    return jax.device_put(np.asarray(a, dtype=np.float64).astype(numpy_dtype(dtype)), device)


def to_numpy(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def jax_residual_dtype(dtype, residual_in_fp32: bool) -> np.dtype:
    """fused_args.residual_dtype for a traced array's dtype (jnp dtypes are the NumPy / ml_dtypes types)."""
    return numpy_dtype(residual_dtype(np.dtype(dtype).name, residual_in_fp32))

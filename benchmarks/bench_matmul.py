"""The compute roofline: an n x n matmul per framework on the run's device, 2·n³ FLOPs per call.

The stacks' % of matmul peak (bench_presets.py) divides their FLOPs per second by the best of these measured on
the same machine, commit, device and dtype, as the bandwidth figures divide by the best streaming kernel.
"""
from __future__ import annotations

import operator

from . import common as cm

MATMUL_BACKENDS = ("torch", "jax")


@cm.per_sample
def matmul_case(backend_name: str, device: str, dtype: str, n: int) -> cm.Case:
    """a @ b on random (n, n) arrays, native to the backend (torch tensors; jax arrays: a compiled primitive)."""
    backend = cm.load(backend_name, device)
    cm.require(dtype in backend.capabilities.dtypes, backend, f"dtype {dtype}")
    a, b = (backend.to_native(cm.random_array((n, n), dtype, cm.SEED + i), dtype) for i in range(2))
    return cm.warmed(cm.Case(operator.matmul, (a, b), backend.synchronize))


class MatmulPeak:
    params = (MATMUL_BACKENDS, cm.DEVICES, cm.PRESET_DTYPES, cm.MATMUL_SIZES)
    param_names = ("backend", "device", "dtype", "n")
    repeat = (5, 50, 1.0)
    min_run_count = 5
    rounds = 1
    warmup_time = 0.0
    timeout = 60
    timer = cm.TIMER  # CUDA events on a GPU (benchmarks/device_timing.py)

    def setup(self, backend, device, dtype, n):
        case = matmul_case(backend, device, dtype, n)
        self.fn, self.args, self.sync = case.fn, case.args, case.sync

    def time_matmul(self, backend, device, dtype, n):
        self.sync(self.fn(*self.args))

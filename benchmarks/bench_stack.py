"""A Pre-LN MLP stack, x = x + mlp(layernorm(x)) repeated `depth` times, forward and backward.

Matmul-bound, so it has no bytes-moved formula: its time is compared across backends and commits only.
"""
from __future__ import annotations

from . import common as cm


class PreLNMLPStack:
    params = (cm.STACK_BACKENDS, cm.DEVICES, cm.DTYPES, cm.STACK_SHAPES, cm.STACK_DEPTHS)
    param_names = ("backend", "device", "dtype", "shape", "depth")
    repeat = (5, 50, 2.0)
    min_run_count = 5
    rounds = 1
    warmup_time = 0.0
    timeout = 180
    timer = cm.TIMER  # CUDA events on a GPU (benchmarks/device_timing.py)

    def setup(self, backend, device, dtype, shape, depth):
        case = cm.stack_case(backend, device, dtype, shape, depth)
        self.fn, self.args, self.sync = case.fn, case.args, case.sync

    def time_pre_ln_mlp_stack_forward_backward(self, backend, device, dtype, shape, depth):
        self.sync(self.fn(*self.args))

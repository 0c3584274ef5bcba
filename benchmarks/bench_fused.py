"""Fused add+norm: out, new_residual = norm(x + residual) * weight (+ bias), x + residual.

One class per operation (its time_ method's name is the op that reports/bytes_moved.py prices), each over
backend x device x dtype x (tokens, hidden). Times are seconds per call; GB/s and the fraction of the copy
roofline are derived in the export (reports/bench_export.py).
"""
from __future__ import annotations

from . import common as cm


class _FusedAddNorm:
    """Shared grid and setup; a subclass fixes the norm kind and whether the backward runs too."""

    kind: str
    backward: bool
    params = (cm.FUSED_BACKENDS, cm.DEVICES, cm.DTYPES, cm.SHAPES)
    param_names = ("backend", "device", "dtype", "shape")
    # asv times one call per sample here (setup hooks isolate calls); 5 to 50 samples, stop after ~2 s.
    repeat = (5, 50, 2.0)
    min_run_count = 5
    rounds = 1  # a second round would repeat the compile in a fresh process for little gain
    warmup_time = 0.0  # setup's untimed call is the warm-up
    timeout = 180  # per parameter combination, setup included: torch.compile's first compile takes ~20 s
    timer = cm.TIMER  # CUDA events on a GPU (benchmarks/device_timing.py)

    def setup(self, backend, device, dtype, shape):
        case = cm.fused_case(backend, device, self.kind, dtype, shape, self.backward)
        self.fn, self.args, self.sync = case.fn, case.args, case.sync


class AddRMSNormForward(_FusedAddNorm):
    kind, backward = "rmsnorm", False

    def time_add_rmsnorm_forward(self, backend, device, dtype, shape):
        self.sync(self.fn(*self.args))


class AddLayerNormForward(_FusedAddNorm):
    kind, backward = "layernorm", False

    def time_add_layernorm_forward(self, backend, device, dtype, shape):
        self.sync(self.fn(*self.args))


class AddRMSNormForwardBackward(_FusedAddNorm):
    kind, backward = "rmsnorm", True

    def time_add_rmsnorm_forward_backward(self, backend, device, dtype, shape):
        self.sync(self.fn(*self.args))


class AddLayerNormForwardBackward(_FusedAddNorm):
    kind, backward = "layernorm", True

    def time_add_layernorm_forward_backward(self, backend, device, dtype, shape):
        self.sync(self.fn(*self.args))

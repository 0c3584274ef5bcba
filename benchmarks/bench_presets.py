"""The layers people run: stacks of the gpt2 and llama presets (backends/presets.py), forward and forward+backward.

GPT-2: LayerNorm with bias, multi-head causal attention, GELU MLP. Llama: RMSNorm, grouped-query attention with
RoPE, SwiGLU, no biases. Compute-bound at realistic widths, so the export reports % of the measured matmul peak
(bench_matmul.py) beside % of the memory roofline, with the FLOP and byte models of reports/flops.py.
"""
from __future__ import annotations

from . import common as cm


class _PresetStack:
    backward: bool
    params = (cm.STACK_BACKENDS, cm.DEVICES, cm.PRESET_DTYPES, cm.PRESETS, cm.PRESET_SHAPES, cm.PRESET_DEPTHS)
    param_names = ("backend", "device", "dtype", "preset", "shape", "depth")
    repeat = (5, 50, 2.0)
    min_run_count = 5
    rounds = 1
    warmup_time = 0.0
    timeout = 180
    timer = cm.TIMER  # CUDA events on a GPU (benchmarks/device_timing.py)

    def setup(self, backend, device, dtype, preset, shape, depth):
        case = cm.preset_case(backend, device, dtype, preset, shape, depth, self.backward)
        self.fn, self.args, self.sync = case.fn, case.args, case.sync


class PresetStackForward(_PresetStack):
    backward = False

    def time_preset_stack_forward(self, backend, device, dtype, preset, shape, depth):
        self.sync(self.fn(*self.args))


class PresetStackForwardBackward(_PresetStack):
    backward = True

    def time_preset_stack_forward_backward(self, backend, device, dtype, preset, shape, depth):
        self.sync(self.fn(*self.args))

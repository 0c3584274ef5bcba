"""How the torch backend runs a stack in each execution mode it claims (backends/modes.py has the contracts).

  compile        each block and the final norm through one torch.compile'd call (Inductor, dynamic=True),
                 forward and backward, as torchtitan compiles per block: blocks of one structure share a
                 graph whatever the depth, batch or sequence, so a case compiles once per block structure
                 instead of once per drawn shape and depth.
  autocast       the forward under torch.autocast(bfloat16) on float32 parameters; backward outside it.
  fp32_residual  bfloat16 parameters; every sublayer reads the float32 stream rounded to bfloat16 and its
                 write is added in float32 (blocks.Stack.compute_in).
  tf32           float32 matmuls with TF32 on (CUDA), restored afterwards.
  cuda_graph     forward and backward captured by torch.cuda.make_graphed_callables, then replayed.
"""
from __future__ import annotations

import contextlib
import functools
import time

import torch
from torch import nn

from resconf.backends.torch.blocks import Stack

RECOMPILE_LIMIT = 4096  # dynamo's default (8) would silently fall back to eager after 8 block structures
COMPILE = {"seconds": 0.0, "graphs": 0}  # what compile mode spent compiling in this process (read by tools)
MODES = frozenset({"eager", "compile", "autocast", "fp32_residual"})  # on the CPU
CUDA_MODES = MODES | {"tf32", "cuda_graph"}


def parameter_dtype(mode: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the stack's parameters are held in: bfloat16 sublayers under fp32_residual."""
    return torch.bfloat16 if mode == "fp32_residual" else dtype


def run_stack(stack: Stack, x: torch.Tensor, mode: str):
    """stack(x) in `mode`: (states, writes, final) as Stack.forward returns them."""
    if mode == "fp32_residual":
        stack.compute_in(torch.bfloat16)
    if mode == "compile":
        return stack(x, call=_compiled_call)
    if mode == "cuda_graph":
        return _graphed(stack, x)
    with forward_context(mode, x.device.type):
        return stack(x)


def grad_context(mode: str, device: str):
    """What the backward runs under: TF32 stays on for tf32; autocast covers the forward only (torch's advice)."""
    return forward_context(mode, device) if mode == "tf32" else contextlib.nullcontext()


def forward_context(mode: str, device: str):
    """What the forward runs under: autocast's and tf32's switches."""
    if mode == "autocast":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    if mode == "tf32":
        return _tf32()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _call(module: nn.Module, x: torch.Tensor):
    return module(x)


def _forward(module: nn.Module, *args, **kwargs):
    return type(module).forward(module, *args, **kwargs)


@functools.cache
def _compiler(fn):
    """fn compiled once: every module passed to it shares its graphs, whatever the depth or shape."""
    return torch.compile(fn, dynamic=True)


def _compiled_call(module: nn.Module, x: torch.Tensor):
    """module(x) compiled (`compiling` says how it fails and what it counts)."""
    with compiling():
        return _compiler(_call)(module, x)


def compile_forward(module: nn.Module) -> None:
    """module's forward compiled in place: a model's own loop calls it, its own hooks run outside the graph
    and its submodules' hooks inside (dynamo traces them). A top-level frame of our own, as _compiled_call:
    Module.compile's graph of _call_impl was skipped here when no hook was attached (torch 2.13)."""
    module.forward = functools.partial(_compiled_forward, module)


def _compiled_forward(module: nn.Module, *args, **kwargs):
    with compiling():
        return _compiler(_forward)(module, *args, **kwargs)


@contextlib.contextmanager
def compiling():
    """torch.compile'd calls inside raise past RECOMPILE_LIMIT rather than falling back to eager, which would
    pass compile mode's cases without compiling; what compiled meanwhile adds its time to COMPILE."""
    counters = torch._dynamo.utils.counters["stats"]
    graphs = counters["unique_graphs"]
    started = time.perf_counter()
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT,
                                    fail_on_recompile_limit_hit=True):
        yield
    if counters["unique_graphs"] != graphs:
        COMPILE["seconds"] += time.perf_counter() - started
        COMPILE["graphs"] += counters["unique_graphs"] - graphs


class _Flat(nn.Module):
    """A stack whose forward returns a flat tuple of tensors, as make_graphed_callables needs, without x_0
    (an output may not be the graph's input)."""

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states, writes, final = self.stack(x)
        return (*states[1:], *writes, *([] if final is None else [final]))


def _graphed(stack: Stack, x: torch.Tensor):
    """Capture the stack's forward and backward once for x's shape, replay them on x."""
    sample = x.detach().clone().requires_grad_()
    graphed = torch.cuda.make_graphed_callables(_Flat(stack), (sample,))
    flat = graphed(x if x.requires_grad else x.detach().requires_grad_())
    updates = sum(len(layer.updates) for layer in stack.layers)
    states, writes = [x, *flat[:updates]], list(flat[updates:2 * updates])
    return states, writes, (flat[2 * updates] if stack.final is not None else None)

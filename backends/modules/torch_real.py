"""The shared half of the adapters for real PyTorch modules (modules/torch_nn.py, hf_*.py): parameters in, trace out.

A real module has its own parameter names and packing (one in_proj for q, k and v; Conv1D's (in, out)
weights beside nn.Linear's (out, in)), so each adapter lists `Slot`s: which of the suite's tensors fill
which module parameter. Stream states and writes are read from the module while it runs, by forward hooks
and pre-hooks on its submodules (never recomputed); the adapter says where (`watch`).

Execution modes (backends/modes.py), through torch's own switches (torch/modes.py):
  compile   each block's and the final norm's forward torch.compile'd in place (dynamic=True), as torchtitan
            compiles per block, the model's own loop calling them; forward and backward. The hooks on a
            block's submodules run inside its graph (dynamo traces them), each layer's into a record of its
            own (`Record.part`).
  autocast  the forward under torch.autocast(bfloat16) on the float32 module; backward outside it.
fp32_residual is not claimed: each of these layers reads and writes its stream through the same tensors its
sublayers compute in (x + attn(ln(x)) in one dtype; a bfloat16 norm or linear rejects a float32 input), so no
module of them keeps the stream in float32 while its sublayers compute in bfloat16 without editing its code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from resconf.backends.base import Backend, StackGrads, StackTrace
from resconf.backends.config import BlockConfig
from resconf.backends.params import LayerParams, check_params
from resconf.backends.torch import modes as torch_modes
from resconf.backends.torch.backend import require_torch_device
from resconf.backends.torch.dtypes import to_numpy, to_tensor, torch_dtype


BUILT_KEPT = 4  # modules kept per backend instance (one conformance case reuses one structure)
MODES = frozenset({"eager", "compile", "autocast"})  # module docstring


@dataclass(frozen=True)
class Slot:
    """Module parameter `path` = the named tensors concatenated along their last (output) axis, transposed
    when the module stores (out, in). A missing name (an absent bias) leaves the slot out."""

    path: str
    names: tuple[str, ...]
    transposed: bool = False

    def pack(self, p: LayerParams) -> np.ndarray:
        t = np.concatenate([np.asarray(p[n]) for n in self.names], axis=-1)
        return t.T if self.transposed else t

    def unpack(self, g: np.ndarray, p: LayerParams) -> dict[str, np.ndarray]:
        g = g.T if self.transposed else g
        cuts = np.cumsum([np.shape(p[n])[-1] for n in self.names])[:-1]
        return dict(zip(self.names, np.split(g, cuts, axis=-1)))


@dataclass
class Record:
    """What the hooks saw, in stream order: one state per update after x_0, one write per update; its own
    lists first, then each part's."""

    states: list[torch.Tensor] = field(default_factory=list)
    writes: list[torch.Tensor] = field(default_factory=list)
    parts: list[Record] = field(default_factory=list)

    def part(self) -> Record:
        """A record for one layer's hooks. A compiled block's hooks appending to lists that grow over the
        stack would recompile the block for each position (dynamo guards a list's length)."""
        self.parts.append(Record())
        return self.parts[-1]

    def seen(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return (self.states + [s for p in self.parts for s in p.states],
                self.writes + [w for p in self.parts for w in p.writes])


def first(out):
    """A module's output tensor: HF attention returns (output, weights), MHA returns (output, None)."""
    return out[0] if isinstance(out, tuple) else out


def output_to(items: list):
    """A forward hook appending the module's output tensor to `items`."""
    return lambda m, args, out: items.append(first(out))


def input_to(items: list):
    """A forward pre-hook appending the module's input to `items`."""
    return lambda m, args: items.append(args[0])


class RealModuleBackend(Backend):
    """Runs `build(cfg, dtype)` with the suite's parameters loaded by `slots`; subclasses say how."""

    devices = ("cpu", "cuda")

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        require_torch_device(self.name, device)

    # --- what a subclass provides ---
    def build(self, cfg: BlockConfig, dtype: torch.dtype) -> nn.Module:
        """The real module (a stack of cfg.depth layers, its final norm when cfg.final_norm), on the meta
        device or anywhere: every mapped parameter is replaced."""
        raise NotImplementedError

    def slots(self, cfg: BlockConfig, layer: int, p: LayerParams) -> list[Slot]:
        raise NotImplementedError

    def watch(self, module: nn.Module, cfg: BlockConfig, record: Record) -> list:
        """Hooks that append each update's state and write to `record`; returns their handles."""
        raise NotImplementedError

    def run(self, module: nn.Module, cfg: BlockConfig, x: torch.Tensor) -> torch.Tensor:
        """The module's output on x (B, T, C): the final norm's when cfg.final_norm, else x_U."""
        raise NotImplementedError

    def compiled_parts(self, module: nn.Module) -> list[nn.Module]:
        """What compile mode compiles: each block and the final norm (module docstring)."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    # --- the adapter API ---
    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        module, x0 = self._prepare(cfg, params, x, dtype)
        record = Record()
        handles = self.watch(module, cfg, record)
        try:
            with torch.no_grad(), torch_modes.forward_context(self.mode, self.device):
                out = self.run(module, cfg, x0)
        finally:
            for h in handles:
                h.remove()
        return self._trace(cfg, x0, record, out)

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        module, x0 = self._prepare(cfg, params, x, dtype)
        x0.requires_grad_()
        with torch_modes.forward_context(self.mode, self.device):
            out = self.run(module, cfg, x0)
        named = dict(module.named_parameters())
        slots = [(layer, s) for layer, p in enumerate(params) for s in self.slots(cfg, layer, p)]
        leaves = [named[s.path] for _, s in slots]
        with torch_modes.grad_context(self.mode, self.device):
            dx, *dw = torch.autograd.grad(out, [x0, *leaves], self._tensor(g, x0.dtype), allow_unused=True)
        grads: list[dict[str, np.ndarray]] = [{name: np.zeros_like(t) for name, t in p.items()} for p in params]
        for (layer, s), d, leaf in zip(slots, dw, leaves):
            grads[layer].update(s.unpack(to_numpy(torch.zeros_like(leaf) if d is None else d), params[layer]))
        return StackGrads(dx=to_numpy(torch.zeros_like(x0) if dx is None else dx),
                          dparams=tuple(LayerParams({n: grads[i][n] for n, _ in p.items()})
                                        for i, p in enumerate(params)))

    # --- benchmark hooks (benchmarks/bench_presets.py): the module called as users call it, no hooks on it ---
    def to_native(self, a: np.ndarray, dtype: str) -> torch.Tensor:
        return self._tensor(a, torch_dtype(dtype))

    def bench_stack(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """f(x, g): the module's forward, then autograd's backward of <g, output> to x and every mapped
        parameter (those _stack_vjp returns); returns the gradients, x's first."""
        module = self._loaded(cfg, params, torch_dtype(dtype))
        named = dict(module.named_parameters())
        leaves = [named[s.path] for layer, p in enumerate(params) for s in self.slots(cfg, layer, p)]

        def forward_backward(x, g):
            x = x.detach().requires_grad_()
            return torch.autograd.grad(self.run(module, cfg, x), [x, *leaves], g, allow_unused=True)

        return forward_backward

    def bench_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """f(x): the module's output under no_grad, in eval mode (torch_nn's inference fast path, where it
        applies: what users get for inference)."""
        module = self._loaded(cfg, params, torch_dtype(dtype))

        def forward(x):
            with torch.no_grad():
                return self.run(module, cfg, x)

        return forward

    def synchronize(self, result) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # --- helpers ---
    def _prepare(self, cfg, params, x, dtype) -> tuple[nn.Module, torch.Tensor]:
        td = torch_dtype(dtype)
        return self._loaded(cfg, params, td), self._tensor(x, td)

    def _loaded(self, cfg: BlockConfig, params: Sequence[LayerParams], td: torch.dtype) -> nn.Module:
        """The module of cfg's structure with `params` in its parameters, in eval mode, every parameter
        requiring grad."""
        check_params(cfg, params)
        module = self._module(cfg, td)
        state = {s.path: self._tensor(s.pack(p), td)
                 for layer, p in enumerate(params) for s in self.slots(cfg, layer, p)}
        missing = [name for name, _ in module.named_parameters() if name not in state]
        for name in missing:  # parameters the suite has no tensor for (embeddings): zeros, never used
            state[name] = torch.zeros_like(module.get_parameter(name), device=self.device, dtype=td)
        module.load_state_dict(state, strict=False, assign=True)
        return module.requires_grad_(True).eval()

    def _module(self, cfg: BlockConfig, dtype: torch.dtype) -> nn.Module:
        """build(cfg, dtype), kept for the next call of the same structure: every mapped parameter is
        reassigned on each call, and building is the slow part (a 128-layer HF model takes seconds). Compile
        mode's copy has its parts compiled (in_mode's copies share this cache)."""
        cache = self.__dict__.setdefault("_built", {})
        compiled = self.mode == "compile"
        key = (cfg, dtype, compiled)
        if key not in cache:
            if len(cache) >= BUILT_KEPT:
                cache.pop(next(iter(cache)))
            cache[key] = self.build(cfg, dtype)
            for part in self.compiled_parts(cache[key]) if compiled else ():
                torch_modes.compile_forward(part)
        return cache[key]

    def _trace(self, cfg: BlockConfig, x0: torch.Tensor, record: Record, out: torch.Tensor) -> StackTrace:
        states, writes = record.seen()
        if len(states) != cfg.n_updates or len(writes) != cfg.n_updates:
            raise RuntimeError(f"backend {self.name!r}: its hooks saw {len(states)} states and "
                               f"{len(writes)} writes, expected {cfg.n_updates} each for {cfg.describe()}")
        return StackTrace(states=to_numpy(torch.stack([x0, *states])),
                          writes=to_numpy(torch.stack(writes)),
                          final=to_numpy(out) if cfg.final_norm else None)

    def _tensor(self, a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return to_tensor(a, dtype, self.device)

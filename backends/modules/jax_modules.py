"""What the Flax and Equinox block adapters share: argument checks, dtype and device handling, the parameter
map between resconf's names and a library module's parameters, and the stack trace's assembly.

Each adapter builds a Pre-LN transformer layer from its library's own layers (norm -> attention -> add, norm ->
mlp -> add), stacks `depth` of them along a leading axis and scans over them, as those libraries' users do
for deep stacks (the compiled program then does not grow with depth). A layer returns its two stream states
and its two writes next to its output, so the trace is read off the real computation. The adapter only maps
arrays: every tensor of a layer goes through one `Slot` of its table (a path in the module and a reshape or
transpose each way), stacked over layers on the way in and split per layer on the way out.

Execution modes (backends/modes.py): Flax's and Equinox's layers pass precision=None to every dot, so they
follow jax.default_matmul_precision, which is part of jit's cache key. eager traces under "highest", as the
jax backend's eager does (float32 operands would be rounded to TF32 on CUDA otherwise); default_precision
under none of ours, the library default users get. `mixed` is claimed by a library whose layers have a
compute dtype apart from their parameters' (`mixed_precision`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jaxlib
import numpy as np

from resconf.backends.base import Backend, Capabilities, StackGrads, StackTrace
from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import claims
from resconf.backends.jax.backend import jax_device
from resconf.backends.jax.dtypes import to_jax, to_numpy
from resconf.backends.params import LayerParams, check_params

TRANSFORMER_LAYER = ("attention", "mlp")
FINAL = "final."  # the final norm's tensors, in the last layer's record only
DTYPES_CLAIMED = claims("float64", "float32", "bfloat16", "float16")  # unless dtypes_on says otherwise
PRECISION = {"eager": "highest", "default_precision": None, "mixed": "highest"}  # module docstring
MIXED_COMPUTE = "bfloat16"  # the dtype layers compute in under mixed (backends/modes.py)


@dataclass(frozen=True)
class Structure:
    """What of a BlockConfig (and the dtype) fixes a module's structure: the key of the module cache and,
    through the module's static fields, of jit's cache. Depth is no field: it is the stacked axis's length."""

    d_model: int
    d_hidden: int
    n_heads: int
    kv_heads: int
    norm: str
    eps: float
    norm_bias: bool
    bias: bool
    activation: str  # "gelu:tanh", "gelu:exact", "relu" or "silu"
    gated: bool
    causal: bool
    final_norm: bool
    dtype: str  # of the parameters and the stream
    compute: str = ""  # the dtype layers compute in when not `dtype` (mixed)

    @classmethod
    def of(cls, cfg: BlockConfig, dtype: str, compute: str = "") -> "Structure":
        act = f"gelu:{cfg.gelu}" if cfg.activation == "gelu" else cfg.activation
        return cls(cfg.d_model, cfg.d_hidden, cfg.n_heads, cfg.kv_heads, cfg.norm, float(cfg.eps), cfg.has_norm_bias,
                   cfg.bias, act, cfg.gated, cfg.causal, cfg.final_norm, dtype, compute)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class Slot:
    """Where resconf's tensor `name` lives in a layer's module (`path`, attribute names or dict keys), and
    how one layer's tensor becomes the module's (`to_module`) and the module's gradient becomes resconf's
    (`from_module`)."""

    name: str
    path: tuple[str, ...]
    to_module: Callable[[np.ndarray, Structure], np.ndarray] = lambda a, s: a
    from_module: Callable[[np.ndarray, Structure], np.ndarray] = lambda a, s: a


class ModuleBackend(Backend):
    """A backend whose layer is a library's module (Flax, Equinox). Subclasses give the library's name and
    version, their features, the parameter table (`slots`) and two jitted runs over native arrays:
    `_forward(s, layers, final, x)` -> (states (L, 2, B, T, C), writes (L, 2, B, T, C), final norm or None)
    and `_vjp(s, layers, final, x, g)` -> (dx, dlayers, dfinal), the parameter dicts keyed by slot name."""

    devices = ("cpu", "cuda")
    compiles_each_depth = True  # depth is the stacked axis's length, part of jit's cache key
    features: frozenset[str] = frozenset()
    dtypes_on: dict[str, frozenset[str]] = {}  # device -> the dtypes claimed there, when not DTYPES_CLAIMED
    mixed_precision = False  # whether its layers take a compute dtype apart from their parameters' (Structure.compute)

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self._device = jax_device(self.name, device)

    @property
    def capabilities(self) -> Capabilities:
        # One Pre-LN transformer layer (attention then MLP), as the library's users write it.
        return Capabilities(placements=frozenset({"pre"}), norms=frozenset({"layernorm", "rmsnorm"}),
                            branches=frozenset(TRANSFORMER_LAYER), features=self.features,
                            dtypes=self.dtypes_on.get(self.device, DTYPES_CLAIMED),
                            layers=frozenset({TRANSFORMER_LAYER}),
                            requires=frozenset({"sublayers"}),
                            modes=frozenset(m for m in PRECISION if m != "mixed" or self.mixed_precision))

    def versions(self) -> dict[str, str]:
        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}

    # --- what a subclass provides ---
    def slots(self, s: Structure) -> tuple[Slot, ...]:
        raise NotImplementedError

    def _forward(self, s: Structure, layers: dict, final: dict | None, x: jax.Array):
        raise NotImplementedError

    def _vjp(self, s: Structure, layers: dict, final: dict | None, x: jax.Array, g: jax.Array):
        raise NotImplementedError

    def _model(self, s: Structure, layers: dict, final: dict | None):
        """The library's stack module holding these tensors."""
        raise NotImplementedError

    # The benchmarks' jitted runs on a built model (a subclass sets its module's functions as staticmethods).
    def run_output(self, model, x: jax.Array) -> jax.Array:
        """The stack's output (the final norm's, else x_L): XLA drops the states and writes nobody reads."""
        raise NotImplementedError(f"backend {self.name!r} offers no forward-only stack benchmark")

    def run_vjp(self, model, x: jax.Array, g: jax.Array):
        """(dx, dparams) of <g, output>."""
        raise NotImplementedError(f"backend {self.name!r} offers no stack benchmark")

    # --- the adapter API ---
    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        s, layers, final = self._prepare(cfg, params, x, dtype)
        with self._matmuls():
            states, writes, out = self._forward(s, layers, final, self.to_native(x, dtype))
        states, writes = (to_numpy(a).reshape((cfg.n_updates,) + np.shape(x)) for a in (states, writes))  # (L, 2, ...)
        return StackTrace(states=np.concatenate([np.asarray(x, dtype=np.float64)[None], states]), writes=writes,
                          final=None if out is None else to_numpy(out))

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        s, layers, final = self._prepare(cfg, params, x, dtype)
        with self._matmuls():
            dx, dlayers, dfinal = self._vjp(s, layers, final, self.to_native(x, dtype), self.to_native(g, dtype))
        return StackGrads(dx=to_numpy(dx), dparams=self._unstack(s, params, dlayers, dfinal))

    def to_native(self, a: np.ndarray, dtype: str) -> jax.Array:
        return to_jax(a, dtype, self._device)

    # --- benchmark hooks (benchmarks/bench_presets.py): the model built once, its jitted run timed ---
    def bench_stack(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        model = self._model(*self._prepare(cfg, params, None, dtype))
        return lambda x, g: self.run_vjp(model, x, g)

    def bench_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        model = self._model(*self._prepare(cfg, params, None, dtype))
        return lambda x: self.run_output(model, x)

    def synchronize(self, result) -> None:
        jax.block_until_ready(result)

    def _matmuls(self):
        """The matmul precision this mode traces under (module docstring)."""
        precision = PRECISION[self.mode]
        return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()

    # --- checks and the parameter map ---
    def _prepare(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray | None, dtype: str):
        """The parameters checked eagerly, naming the shapes (an error from inside jit would not say which
        tensor of which layer is wrong), then (structure, layer tensors stacked over layers, final norm's
        tensors or None)."""
        check_params(cfg, params)
        s = Structure.of(cfg, dtype, MIXED_COMPUTE if self.mode == "mixed" else "")
        layers, final = {}, {}
        for slot in self.slots(s):
            if slot.name.startswith(FINAL):
                if slot.name in params[-1]:
                    final[slot.name] = self.to_native(slot.to_module(params[-1][slot.name], s), dtype)
            elif slot.name in params[0]:
                layers[slot.name] = self.to_native(np.stack([slot.to_module(p[slot.name], s) for p in params]), dtype)
        return s, layers, final or None

    def _unstack(self, s: Structure, params: Sequence[LayerParams], dlayers: dict, dfinal: dict | None
                 ) -> tuple[LayerParams, ...]:
        """Per-layer float64 gradient records under resconf's names, in the parameters' order."""
        slots = {slot.name: slot for slot in self.slots(s)}
        stacked = {name: to_numpy(t) for name, t in dlayers.items()}  # (L, ...) each
        final = {name: to_numpy(t) for name, t in (dfinal or {}).items()}
        return tuple(LayerParams({name: slots[name].from_module(final[name] if name.startswith(FINAL)
                                                                else stacked[name][layer], s)
                                  for name, _ in p.items()})
                     for layer, p in enumerate(params))

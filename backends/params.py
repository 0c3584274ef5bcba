"""Parameters of a layer: one table of shapes, read by the draw, the validation and every adapter.

A layer's tensors are named `<sublayer>.<name>` (`attention.wq`, `mlp.w_down`, `final.norm_weight`).
Linear layers are stored as y = x @ w + b with w of shape (in, out); a framework that keeps (out, in)
transposes. Adding a branch is one set of rows in PARAMS plus its maths.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from resconf.backends.config import BlockConfig

BASE_STD = 0.02  # GPT-2 / nanoGPT's std for every weight
ANY = "*"  # a row every sublayer kind has


@dataclass(frozen=True)
class ParamSpec:
    kind: str  # "attention", "mlp", "linear", ANY (every sublayer) or "final" (the norm after the stack)
    name: str
    shape: Callable[[BlockConfig], tuple[int, ...]]
    init: str  # "ones", "zeros", "weight" (input projection), "out" (writes to the stream), "gate", "layer_scale"
    present: Callable[[BlockConfig, str], bool] = lambda cfg, kind: True
    deepnorm_beta: bool = False  # DeepNet's gain beta (FFN, value and output projections; not q, k)


def _own_norm(cfg: BlockConfig, kind: str) -> bool:
    return cfg.norm_owner(kind) == kind


def _input_norm(cfg: BlockConfig, kind: str) -> bool:
    return _own_norm(cfg, kind) and cfg.input_norm


def _bias(cfg: BlockConfig, kind: str) -> bool:
    return cfg.has_bias(kind)


def _qk_norm_width(cfg: BlockConfig, heads: int) -> tuple[int]:
    """One gain per head dim (shared by the heads), or per dim of the whole projection (OLMo 2)."""
    return (cfg.head_dim,) if cfg.qk_norm_scope == "head" else (heads * cfg.head_dim,)


C = lambda cfg: (cfg.d_model,)  # noqa: E731 (the table reads best with one-line shapes)

def _attention_rows(kind: str) -> tuple[ParamSpec, ...]:
    """q (C, nh hd), k and v (C, nkv hd), out (nh hd, C), and self-attention's QK-norm gains."""
    qk_norm = (lambda cfg, _: cfg.qk_norm) if kind == "attention" else (lambda cfg, _: False)
    return (
        ParamSpec(kind, "wq", lambda cfg: (cfg.d_model, cfg.n_heads * cfg.head_dim), "weight"),
        ParamSpec(kind, "bq", lambda cfg: (cfg.n_heads * cfg.head_dim,), "zeros", _bias),
        ParamSpec(kind, "wk", lambda cfg: (cfg.d_model, cfg.kv_heads * cfg.head_dim), "weight"),
        ParamSpec(kind, "bk", lambda cfg: (cfg.kv_heads * cfg.head_dim,), "zeros", _bias),
        ParamSpec(kind, "wv", lambda cfg: (cfg.d_model, cfg.kv_heads * cfg.head_dim), "weight", deepnorm_beta=True),
        ParamSpec(kind, "bv", lambda cfg: (cfg.kv_heads * cfg.head_dim,), "zeros", _bias),
        ParamSpec(kind, "q_norm_weight", lambda cfg: _qk_norm_width(cfg, cfg.n_heads), "ones", qk_norm),
        ParamSpec(kind, "k_norm_weight", lambda cfg: _qk_norm_width(cfg, cfg.kv_heads), "ones", qk_norm),
        ParamSpec(kind, "wo", lambda cfg: (cfg.n_heads * cfg.head_dim, cfg.d_model), "out", deepnorm_beta=True),
        ParamSpec(kind, "bo", C, "zeros", _bias),
    )


PARAMS = (
    ParamSpec(ANY, "norm_weight", C, "ones", _input_norm),
    ParamSpec(ANY, "norm_bias", C, "zeros", lambda cfg, kind: _input_norm(cfg, kind) and cfg.has_norm_bias),
    *_attention_rows("attention"),
    # cross_attention: queries from the stream, keys and values from the memory (S, C), the encoder's output,
    # a tensor of this record (config.py says why); no QK-norm
    *_attention_rows("cross_attention"),
    ParamSpec("cross_attention", "memory", lambda cfg: (cfg.memory_len, cfg.d_model), "memory"),
    # mlp: down(act(x W_gate) * x W_up) when gated, else down(act(x W_up))
    ParamSpec("mlp", "w_gate", lambda cfg: (cfg.d_model, cfg.d_hidden), "weight", lambda cfg, kind: cfg.gated, True),
    ParamSpec("mlp", "b_gate", lambda cfg: (cfg.d_hidden,), "zeros", lambda cfg, kind: cfg.gated and cfg.bias),
    ParamSpec("mlp", "w_up", lambda cfg: (cfg.d_model, cfg.d_hidden), "weight", deepnorm_beta=True),
    ParamSpec("mlp", "b_up", lambda cfg: (cfg.d_hidden,), "zeros", _bias),
    ParamSpec("mlp", "w_down", lambda cfg: (cfg.d_hidden, cfg.d_model), "out", deepnorm_beta=True),
    ParamSpec("mlp", "b_down", C, "zeros", _bias),
    # linear: one projection, the write itself
    ParamSpec("linear", "w_out", lambda cfg: (cfg.d_model, cfg.d_model), "out", deepnorm_beta=True),
    ParamSpec("linear", "b_out", C, "zeros", _bias),
    # the norm on the branch's output (sandwich, OLMo 2), then per sublayer scalars and gains on the write
    ParamSpec(ANY, "branch_norm_weight", C, "ones", lambda cfg, kind: cfg.branch_norm),
    ParamSpec(ANY, "branch_norm_bias", C, "zeros", lambda cfg, kind: cfg.branch_norm and cfg.has_norm_bias),
    ParamSpec(ANY, "layer_scale", C, "layer_scale", lambda cfg, kind: cfg.layer_scale is not None),
    ParamSpec(ANY, "gate", lambda cfg: (), "gate", lambda cfg, kind: cfg.placement == "rezero"),
    # the final norm, in the last layer's record
    ParamSpec("final", "norm_weight", C, "ones"),
    ParamSpec("final", "norm_bias", C, "zeros", lambda cfg, kind: cfg.has_norm_bias),
)


def layer_specs(cfg: BlockConfig, last: bool = False) -> Iterator[tuple[str, ParamSpec]]:
    """(full name, spec) of every tensor of one layer, in a fixed order; `last` adds the final norm."""
    kinds = cfg.sublayers + (("final",) if last and cfg.final_norm else ())
    for kind in kinds:
        for spec in PARAMS:
            if (spec.kind == kind or (spec.kind == ANY and kind != "final")) and spec.present(cfg, kind):
                yield f"{kind}.{spec.name}", spec


def layer_shapes(cfg: BlockConfig, last: bool = False) -> dict[str, tuple[int, ...]]:
    return {name: spec.shape(cfg) for name, spec in layer_specs(cfg, last)}


@dataclass(frozen=True)
class LayerParams:
    """One layer's tensors by full name. Immutable: map() and replace() return new records."""

    tensors: Mapping[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def get(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, tensor) for every tensor, in the table's order."""
        return iter(self.tensors.items())

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "LayerParams":
        """The same names with fn applied to every tensor."""
        return LayerParams({name: fn(t) for name, t in self.items()})

    def replace(self, updates: Mapping[str, np.ndarray]) -> "LayerParams":
        unknown = sorted(set(updates) - set(self.tensors))
        if unknown:
            raise KeyError(f"{unknown} are not tensors of this layer; it has {sorted(self.tensors)}")
        return LayerParams({**self.tensors, **updates})

    def sub(self, kind: str) -> types.SimpleNamespace:
        """Sublayer `kind`'s tensors by short name (`.wq`, `.norm_weight`), None for every absent table row."""
        names = {spec.name for spec in PARAMS if spec.kind in (kind, ANY)}
        return types.SimpleNamespace(**{name: self.get(f"{kind}.{name}") for name in names})


BlockParams = LayerParams  # the name of the record before the layer model (still importable)


def check_params(cfg: BlockConfig, params) -> None:
    """Every layer has exactly the tensors of the table, in its shapes, or a ValueError naming the fix."""
    if len(params) != cfg.depth:
        raise ValueError(f"{len(params)} layer records for depth={cfg.depth}; expected one per layer")
    for layer, p in enumerate(params):
        want = layer_shapes(cfg, last=layer == len(params) - 1)
        have = {name: tuple(np.shape(t)) for name, t in p.items()}
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            raise ValueError(f"layer {layer}: missing tensors {missing}, tensors not used {extra} "
                             f"by {cfg.describe()}")
        for name, shape in want.items():
            if have[name] != shape:
                raise ValueError(f"layer {layer}: {name} has shape {have[name]}, expected {shape} "
                                 f"for {cfg.describe()}")


def draw_params(cfg: BlockConfig, seed: int, perturb: bool = False) -> tuple[LayerParams, ...]:
    """One LayerParams per layer of a depth-`cfg.depth` stack, following the init scheme `cfg.init`.

    perturb=True adds small noise to norm gains and every bias, so that a backend which ignores one
    of them cannot agree with the reference by accident (the schemes themselves zero all biases).
    """
    rng = np.random.default_rng(seed)
    return tuple(LayerParams({name: memory(cfg, seed) if spec.init == "memory" else _draw(cfg, spec, rng, perturb)
                              for name, spec in layer_specs(cfg, last=layer == cfg.depth - 1)})
                 for layer in range(cfg.depth))


def memory(cfg: BlockConfig, seed: int) -> np.ndarray:
    """The encoder's output that every layer's cross-attention reads, the same in every layer's record: standard
    normal, as an encoder's final norm leaves it. Its own generator, so the other tensors draw as without it."""
    return np.random.default_rng([seed, cfg.memory_len]).standard_normal((cfg.memory_len, cfg.d_model))  # (S, C)


def _draw(cfg: BlockConfig, spec: ParamSpec, rng: np.random.Generator, perturb: bool) -> np.ndarray:
    shape = spec.shape(cfg)
    if spec.init in ("weight", "out"):
        return _weight(rng, shape, cfg, spec)
    if spec.init == "ones":
        return np.ones(shape) + (rng.normal(0.0, 0.1, shape) if perturb else 0.0)
    if spec.init == "gate":
        return np.array(0.0 if cfg.init == "rezero" else 1.0)
    if spec.init == "layer_scale":
        return np.full(shape, cfg.layer_scale)
    if not perturb:  # zeros: biases
        return np.zeros(shape)
    if cfg.init == "zero" and spec.name in OUT_BIASES:
        return np.zeros(shape)  # a zero-init write stays exactly zero
    if spec.name.endswith("norm_bias"):
        return rng.normal(0.0, 0.1, shape)
    return rng.normal(0.0, BASE_STD, shape)


OUT_BIASES = ("bo", "b_down", "b_out", "branch_norm_bias")  # the biases that end a write


def _weight(rng: np.random.Generator, shape: tuple[int, int], cfg: BlockConfig, spec: ParamSpec) -> np.ndarray:
    if cfg.init == "zero" and spec.init == "out":
        return np.zeros(shape)
    if cfg.init == "deepnorm":
        # DeepNet: Xavier-normal, times beta on FFN, value and output projections
        w = rng.normal(0.0, np.sqrt(2.0 / sum(shape)), shape)
        return w * cfg.deepnorm_beta if spec.deepnorm_beta else w
    return rng.normal(0.0, expected_std(cfg, spec.init), shape)


WEIGHT_ROLES = ("weight", "out")


def expected_std(cfg: BlockConfig, role: str) -> float:
    """The std scheme cfg.init prescribes for a weight of role "weight" or "out" (nanoGPT for gpt2:
    0.02 / sqrt(number of residual writes of the whole model) on every projection that writes to the stream)."""
    if role not in WEIGHT_ROLES:
        raise ValueError(f"role={role!r} is not one of {WEIGHT_ROLES}; for a tensor name pass role_of(name)")
    if cfg.init == "zero" and role == "out":
        return 0.0
    if cfg.init == "gpt2" and role == "out":
        return BASE_STD / np.sqrt(cfg.model_writes)
    return BASE_STD


def role_of(name: str) -> str:
    """The init role ("weight", "out", ...) of a full tensor name."""
    short = name.split(".", 1)[1]
    return next(spec.init for spec in PARAMS if spec.name == short)

"""A Flax NNX Pre-LN transformer layer, written as Flax users write it, under resconf's checks.

    x = x + attn(norm1(x))      nnx.LayerNorm / nnx.RMSNorm, nnx.MultiHeadAttention
    x = x + mlp(norm2(x))       nnx.Linear -> nnx.gelu / relu / silu (gated: act(gate) * up) -> nnx.Linear

`depth` layers are created with nnx.vmap (one stacked module, parameters with a leading layer axis) and run
with nnx.scan, the NNX way to stack layers without a compile that grows with depth; nnx.jit caches the
program per module structure (graphdef) and shapes. Each module is built with the library's defaults except
what resconf's configuration fixes: epsilon=cfg.eps, dtype and param_dtype the dtype under test, use_bias.
In particular nnx.LayerNorm keeps its default use_fast_variance=True (Var = E[x^2] - E[x]^2 in float32 or
wider), and nnx.MultiHeadAttention its default attention_fn (nnx.dot_product_attention, which calls
jax.nn.dot_product_attention: softmax always in float32). What users run is what is measured.

Parameter map (resconf stores linears as (in, out), as Flax does):
    <kind>.norm_weight / norm_bias    norm1 or norm2 .scale / .bias
    attention.wq, wk, wv (C, n hd)    attn.query / key / value .kernel (C, n, hd); biases (n, hd)
    attention.wo (nh hd, C)           attn.out.kernel (nh, hd, C); bo attn.out.bias
    mlp.w_up / w_gate / w_down        mlp.up / gate / down .kernel; biases .bias
    final.norm_weight / norm_bias     final.scale / .bias (a norm after the stack)
"""
from __future__ import annotations

import functools
from collections import Counter

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from resconf.backends.dtypes import claims
from resconf.backends.modules.jax_modules import ModuleBackend, Slot, Structure

TRACES: Counter[str] = Counter()  # function name -> times traced (each trace is a compile)
ACTIVATIONS = {"gelu:tanh": functools.partial(nnx.gelu, approximate=True),
               "gelu:exact": functools.partial(nnx.gelu, approximate=False),
               "relu": nnx.relu, "silu": nnx.silu}


def _dtypes(s: Structure) -> dict:
    """A module's dtype (of its computation: Flax's mixed precision under `mixed`) and param_dtype."""
    return dict(dtype=jnp.dtype(s.compute or s.dtype), param_dtype=jnp.dtype(s.dtype))


def _norm(s: Structure, rngs: nnx.Rngs) -> nnx.Module:
    kw = dict(epsilon=s.eps, **_dtypes(s), rngs=rngs)
    if s.norm == "rmsnorm":
        return nnx.RMSNorm(s.d_model, **kw)
    return nnx.LayerNorm(s.d_model, use_bias=s.norm_bias, **kw)


class Mlp(nnx.Module):
    def __init__(self, s: Structure, rngs: nnx.Rngs):
        kw = dict(use_bias=s.bias, **_dtypes(s), rngs=rngs)
        self.up = nnx.Linear(s.d_model, s.d_hidden, **kw)
        self.gate = nnx.Linear(s.d_model, s.d_hidden, **kw) if s.gated else None
        self.down = nnx.Linear(s.d_hidden, s.d_model, **kw)
        self.act = ACTIVATIONS[s.activation]

    def __call__(self, h):  # (B, T, C)
        u = self.up(h)  # (B, T, H)
        a = self.act(self.gate(h)) * u if self.gate is not None else self.act(u)
        return self.down(a)  # (B, T, C)


class Block(nnx.Module):
    """One Pre-LN layer; returns the new stream, its two states and its two writes (each (2, B, T, C))."""

    def __init__(self, s: Structure, rngs: nnx.Rngs):
        self.norm1 = _norm(s, rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=s.n_heads, in_features=s.d_model, num_kv_heads=s.kv_heads,
                                           use_bias=s.bias, decode=False, **_dtypes(s), rngs=rngs)
        self.norm2 = _norm(s, rngs)
        self.mlp = Mlp(s, rngs)
        self.causal = s.causal

    def __call__(self, x):  # (B, T, C)
        mask = nnx.make_causal_mask(x[..., 0]) if self.causal else None  # (B, 1, T, T)
        a = self.attn(self.norm1(x), mask=mask)
        x1 = x + a
        m = self.mlp(self.norm2(x1))
        x2 = x1 + m
        return x2, jnp.stack([x1, x2]), jnp.stack([a, m])


class Stack(nnx.Module):
    def __init__(self, s: Structure, depth: int, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs: nnx.Rngs) -> Block:
            return Block(s, rngs)

        self.layers = make(rngs)
        self.final = _norm(s, rngs) if s.final_norm else None

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        def step(x, block: Block):
            x, states, writes = block(x)
            return x, (states, writes)

        x, (states, writes) = step(x, self.layers)  # (L, 2, B, T, C) each
        # the output in the stream's dtype, as a mixed policy casts it (a no-op unless `mixed`)
        return x, states, writes, None if self.final is None else self.final(x).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _template(s: Structure, depth: int):
    """(graphdef, abstract state) of a stack of this structure: built once, without drawing parameters."""
    return nnx.split(nnx.eval_shape(lambda: Stack(s, depth, nnx.Rngs(0))))


@nnx.jit
def _run(model: Stack, x):
    TRACES["stack_forward"] += 1
    _, states, writes, out = model(x)
    return states, writes, out


@nnx.jit
def _run_output(model: Stack, x):
    x_last, _, _, out = model(x)
    return x_last if out is None else out


@nnx.jit
def _run_vjp(model: Stack, x, g):
    TRACES["stack_vjp"] += 1
    graphdef, params = nnx.split(model, nnx.Param)

    def output(params, x):
        x_last, _, _, out = nnx.merge(graphdef, params)(x)
        return x_last if out is None else out

    _, pullback = jax.vjp(output, params, x)
    dparams, dx = pullback(g)
    return dx, dparams


def _heads(n):
    """(C, n hd) <-> (C, n, hd), and biases (n hd,) <-> (n, hd)."""
    return Slot("", (), lambda a, s: a.reshape(a.shape[:-1] + (n(s), s.head_dim)),
                lambda a, s: a.reshape(a.shape[:-2] + (-1,)))


def _slot(name: str, path: str, like: Slot | None = None) -> Slot:
    return Slot(name, tuple(path.split(".")), *((like.to_module, like.from_module) if like else ()))


Q, KV = _heads(lambda s: s.n_heads), _heads(lambda s: s.kv_heads)
OUT = Slot("", (), lambda a, s: a.reshape(s.n_heads, s.head_dim, s.d_model), lambda a, s: a.reshape(-1, s.d_model))
SLOTS = (
    _slot("attention.norm_weight", "norm1.scale"), _slot("attention.norm_bias", "norm1.bias"),
    _slot("attention.wq", "attn.query.kernel", Q), _slot("attention.bq", "attn.query.bias", Q),
    _slot("attention.wk", "attn.key.kernel", KV), _slot("attention.bk", "attn.key.bias", KV),
    _slot("attention.wv", "attn.value.kernel", KV), _slot("attention.bv", "attn.value.bias", KV),
    _slot("attention.wo", "attn.out.kernel", OUT), _slot("attention.bo", "attn.out.bias"),
    _slot("mlp.norm_weight", "norm2.scale"), _slot("mlp.norm_bias", "norm2.bias"),
    _slot("mlp.w_gate", "mlp.gate.kernel"), _slot("mlp.b_gate", "mlp.gate.bias"),
    _slot("mlp.w_up", "mlp.up.kernel"), _slot("mlp.b_up", "mlp.up.bias"),
    _slot("mlp.w_down", "mlp.down.kernel"), _slot("mlp.b_down", "mlp.down.bias"),
    _slot("final.norm_weight", "scale"), _slot("final.norm_bias", "bias"),
)


def _put(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


class FlaxBlockBackend(ModuleBackend):
    """A Pre-LN transformer layer of Flax NNX modules (gpt2 and encoder presets; GQA through num_kv_heads)."""

    name = "flax_block"
    mixed_precision = True  # every nnx layer takes dtype= (computation) apart from param_dtype=
    features = frozenset({"sublayers", "final_norm", "bidirectional", "no_bias", "no_norm_bias", "gqa",
                          "relu", "silu", "gated"})
    # float16 on the CPU: nnx.MultiHeadAttention's jax.nn.dot_product_attention asks for the dot algorithm
    # F16_F16_F32, which XLA:CPU rejects when the jitted layer is compiled ("The precision 'F16_F16_F32' is
    # not supported by dot_general on CPU"; its try/except fallback only catches errors while tracing).
    # float64 nowhere: the same function's softmax is always float32 (jax.nn.dot_product_attention), so a
    # float64 layer is float32-accurate (3.7e-9 relative), and at large |x| LayerNorm's clamped fast variance
    # turns a rounded mean into outputs of 1e22 that overflow that float32 softmax (docs/findings.md).
    dtypes_on = {"cpu": claims("float32", "bfloat16"), "cuda": claims("float32", "bfloat16", "float16")}
    run_output, run_vjp = staticmethod(_run_output), staticmethod(_run_vjp)

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "flax": flax.__version__}

    def slots(self, s: Structure) -> tuple[Slot, ...]:
        return SLOTS

    def _model(self, s: Structure, layers: dict, final: dict | None) -> Stack:
        depth = next(iter(layers.values())).shape[0]
        graphdef, state = _template(s, depth)
        pure = {}
        for slot in SLOTS:
            if slot.name in layers:
                _put(pure, ("layers",) + slot.path, layers[slot.name])
            elif final and slot.name in final:
                _put(pure, ("final",) + slot.path, final[slot.name])
        state = jax.tree.map(lambda a: a, state)  # a copy: the cached template stays abstract
        nnx.replace_by_pure_dict(state, pure)
        return nnx.merge(graphdef, state)

    def _forward(self, s, layers, final, x):
        return _run(self._model(s, layers, final), x)

    def _vjp(self, s, layers, final, x, g):
        dx, dparams = _run_vjp(self._model(s, layers, final), x, g)
        pure = nnx.to_pure_dict(dparams)
        dlayers = {slot.name: _get(pure["layers"], slot.path) for slot in SLOTS if slot.name in layers}
        dfinal = {slot.name: _get(pure["final"], slot.path) for slot in SLOTS if final and slot.name in final}
        return dx, dlayers, dfinal or None

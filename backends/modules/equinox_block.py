"""An Equinox Pre-LN transformer layer, written as Equinox users write it, under resconf's checks.

    x = x + attn(norm1(x))      eqx.nn.LayerNorm / eqx.nn.RMSNorm (per token), eqx.nn.MultiheadAttention
    x = x + mlp(norm2(x))       eqx.nn.Linear -> jax.nn.gelu / relu / silu (gated: act(gate) * up) -> eqx.nn.Linear

Equinox layers act on one example: norms and linears on one token (C,), attention on one sequence (T, C); the
layer vmaps them over the batch (and tokens), as Equinox's documentation does. `depth` layers are created
with eqx.filter_vmap (parameters with a leading layer axis) and run with jax.lax.scan over the arrays
(eqx.partition / eqx.combine), Equinox's recipe for deep stacks; eqx.filter_jit caches the program per
module structure and shapes. Modules keep the library's defaults except what resconf's configuration
fixes: eps=cfg.eps, dtype the dtype under test, biases (eqx.nn.MultiheadAttention has none by default:
use_query_bias etc. follow cfg.bias).

Parameter map (eqx.nn.Linear stores (out, in): transposed each way):
    <kind>.norm_weight / norm_bias    norm1 or norm2 .weight / .bias
    attention.wq, wk, wv (C, n hd)    attn.query_proj / key_proj / value_proj .weight.T; biases .bias
    attention.wo (nh hd, C)           attn.output_proj.weight.T; bo attn.output_proj.bias
    mlp.w_up / w_gate / w_down        mlp.up / gate / down .weight.T; biases .bias
    final.norm_weight / norm_bias     final.weight / .bias (a norm after the stack)
"""
from __future__ import annotations

import functools
from collections import Counter

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from resconf.backends.modules.jax_modules import ModuleBackend, Slot, Structure

TRACES: Counter[str] = Counter()  # function name -> times traced (each trace is a compile)
ACTIVATIONS = {"gelu:tanh": functools.partial(jax.nn.gelu, approximate=True),
               "gelu:exact": functools.partial(jax.nn.gelu, approximate=False),
               "relu": jax.nn.relu, "silu": jax.nn.silu}


def _norm(s: Structure):
    if s.norm == "rmsnorm":
        return eqx.nn.RMSNorm(s.d_model, eps=s.eps, use_bias=False, dtype=jnp.dtype(s.dtype))
    return eqx.nn.LayerNorm(s.d_model, eps=s.eps, use_bias=s.norm_bias, dtype=jnp.dtype(s.dtype))


def per_token(f, x):
    """f of one token (C,) applied to every token of x (B, T, C)."""
    return jax.vmap(jax.vmap(f))(x)


class Mlp(eqx.Module):
    up: eqx.nn.Linear
    gate: eqx.nn.Linear | None
    down: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, s: Structure, key):
        k_up, k_gate, k_down = jr.split(key, 3)
        dt = jnp.dtype(s.dtype)
        self.up = eqx.nn.Linear(s.d_model, s.d_hidden, use_bias=s.bias, dtype=dt, key=k_up)
        self.gate = eqx.nn.Linear(s.d_model, s.d_hidden, use_bias=s.bias, dtype=dt, key=k_gate) if s.gated else None
        self.down = eqx.nn.Linear(s.d_hidden, s.d_model, use_bias=s.bias, dtype=dt, key=k_down)
        self.activation = s.activation

    def __call__(self, h):  # (C,)
        act = ACTIVATIONS[self.activation]
        u = self.up(h)  # (H,)
        return self.down(act(self.gate(h)) * u if self.gate is not None else act(u))  # (C,)


class Block(eqx.Module):
    """One Pre-LN layer on a batch (B, T, C); returns the new stream, its two states and its two writes."""

    norm1: eqx.Module
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.Module
    mlp: Mlp
    causal: bool = eqx.field(static=True)

    def __init__(self, s: Structure, key):
        k_attn, k_mlp = jr.split(key)
        self.norm1, self.norm2 = _norm(s), _norm(s)
        self.attn = eqx.nn.MultiheadAttention(s.n_heads, s.d_model, use_query_bias=s.bias, use_key_bias=s.bias,
                                              use_value_bias=s.bias, use_output_bias=s.bias,
                                              dtype=jnp.dtype(s.dtype), key=k_attn)
        self.mlp = Mlp(s, k_mlp)
        self.causal = s.causal

    def __call__(self, x):  # (B, T, C)
        T = x.shape[1]
        mask = jnp.tril(jnp.ones((T, T), dtype=bool)) if self.causal else None  # query t sees s <= t
        h = per_token(self.norm1, x)
        a = jax.vmap(lambda h: self.attn(h, h, h, mask=mask))(h)  # one sequence at a time
        x1 = x + a
        m = per_token(self.mlp, per_token(self.norm2, x1))
        x2 = x1 + m
        return x2, jnp.stack([x1, x2]), jnp.stack([a, m])


class Stack(eqx.Module):
    layers: Block  # every array with a leading layer axis
    final: eqx.Module | None

    def __init__(self, s: Structure, depth: int, key):
        k_layers, _ = jr.split(key)
        self.layers = eqx.filter_vmap(lambda k: Block(s, k))(jr.split(k_layers, depth))
        self.final = _norm(s) if s.final_norm else None

    def __call__(self, x):
        dynamic, static = eqx.partition(self.layers, eqx.is_array)

        def step(x, layer):
            x, states, writes = eqx.combine(layer, static)(x)
            return x, (states, writes)

        x, (states, writes) = jax.lax.scan(step, x, dynamic)  # (L, 2, B, T, C) each
        return x, states, writes, None if self.final is None else per_token(self.final, x)


@functools.lru_cache(maxsize=None)
def _template(s: Structure, depth: int) -> Stack:
    """A stack of this structure with abstract arrays: built once, without drawing parameters."""
    return eqx.filter_eval_shape(Stack, s, depth, jr.PRNGKey(0))


@eqx.filter_jit
def _run(model: Stack, x):
    TRACES["stack_forward"] += 1
    _, states, writes, out = model(x)
    return states, writes, out


@eqx.filter_jit
def _run_output(model: Stack, x):
    x_last, _, _, out = model(x)
    return x_last if out is None else out


@eqx.filter_jit
def _run_vjp(model: Stack, x, g):
    TRACES["stack_vjp"] += 1
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def output(params, x):
        x_last, _, _, out = eqx.combine(params, static)(x)
        return x_last if out is None else out

    _, pullback = jax.vjp(output, params, x)
    dparams, dx = pullback(g)
    return dx, dparams


T = Slot("", (), lambda a, s: a.T, lambda a, s: a.T)  # (in, out) <-> eqx.nn.Linear's (out, in)


def _slot(name: str, path: str, like: Slot | None = None) -> Slot:
    return Slot(name, tuple(path.split(".")), *((like.to_module, like.from_module) if like else ()))


SLOTS = (
    _slot("attention.norm_weight", "norm1.weight"), _slot("attention.norm_bias", "norm1.bias"),
    _slot("attention.wq", "attn.query_proj.weight", T), _slot("attention.bq", "attn.query_proj.bias"),
    _slot("attention.wk", "attn.key_proj.weight", T), _slot("attention.bk", "attn.key_proj.bias"),
    _slot("attention.wv", "attn.value_proj.weight", T), _slot("attention.bv", "attn.value_proj.bias"),
    _slot("attention.wo", "attn.output_proj.weight", T), _slot("attention.bo", "attn.output_proj.bias"),
    _slot("mlp.norm_weight", "norm2.weight"), _slot("mlp.norm_bias", "norm2.bias"),
    _slot("mlp.w_gate", "mlp.gate.weight", T), _slot("mlp.b_gate", "mlp.gate.bias"),
    _slot("mlp.w_up", "mlp.up.weight", T), _slot("mlp.b_up", "mlp.up.bias"),
    _slot("mlp.w_down", "mlp.down.weight", T), _slot("mlp.b_down", "mlp.down.bias"),
    _slot("final.norm_weight", "weight"), _slot("final.norm_bias", "bias"),
)


def _get(tree, path: tuple[str, ...]):
    for name in path:
        tree = getattr(tree, name)
    return tree


class EquinoxBlockBackend(ModuleBackend):
    """A Pre-LN transformer layer of Equinox modules (gpt2 and encoder presets)."""

    name = "equinox_block"
    # mixed not claimed: an Equinox layer's dtype is its parameters'; it computes in its inputs' and
    # parameters' promoted dtype, so a mixed policy is the user's own casts around each sublayer (jmp), which
    # would check our casts, not Equinox
    features = frozenset({"sublayers", "final_norm", "bidirectional", "no_bias", "no_norm_bias",
                          "relu", "silu", "gated"})
    run_output, run_vjp = staticmethod(_run_output), staticmethod(_run_vjp)

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "equinox": eqx.__version__}

    def slots(self, s: Structure) -> tuple[Slot, ...]:
        return SLOTS

    def _model(self, s: Structure, layers: dict, final: dict | None) -> Stack:
        model = _template(s, next(iter(layers.values())).shape[0])
        where = [(("layers",) + slot.path, layers[slot.name]) for slot in SLOTS if slot.name in layers]
        where += [(("final",) + slot.path, final[slot.name]) for slot in SLOTS if final and slot.name in final]
        return eqx.tree_at(lambda m: [_get(m, path) for path, _ in where], model, [value for _, value in where])

    def _forward(self, s, layers, final, x):
        return _run(self._model(s, layers, final), x)

    def _vjp(self, s, layers, final, x, g):
        dx, dparams = _run_vjp(self._model(s, layers, final), x, g)
        dlayers = {slot.name: _get(dparams.layers, slot.path) for slot in SLOTS if slot.name in layers}
        dfinal = {slot.name: _get(dparams.final, slot.path) for slot in SLOTS if final and slot.name in final}
        return dx, dlayers, dfinal or None

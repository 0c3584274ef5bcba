"""The residual layer in JAX: norms, branches (linear, mlp, attention), the five placements, a depth-L stack
as one lax.scan, the final norm, and fused add+norm. Pure functions of jax arrays; jax/backend.py jits and
caches them. The float64 oracle (oracle/numpy_ref.py) is the spec; each function names its counterpart there.

Why a scan: jit(vjp) of an unrolled Python loop compiles in time growing with depth (233 s at L=128),
a scan over parameters stacked along a leading L axis compiles once for every depth (< 1 s). A layer
is the scan's body: its updates (one per sublayer, one per parallel layer) unrolled inside it.

Low precision (bfloat16, float16) is computed the way frameworks do on CPU: every op accumulates in
float32 and rounds its output once to the input dtype; the residual add itself is done in the input
dtype. float64 stays float64 throughout (jax.nn.dot_product_attention is not used because it always
takes its softmax in float32).
"""
from __future__ import annotations

import contextvars
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resconf.backends.config import BlockConfig
from resconf.backends.jax.dtypes import jax_residual_dtype
from resconf.backends.params import LayerParams

# LayerParams as a pytree: its `tensors` dict is the subtree, so stacked layers go through lax.scan and
# jax.vjp keeping their names, and which tensors exist (biases, gates, gains) is part of jit's cache key.
# Registered once, here, only when JAX is in use.
jax.tree_util.register_dataclass(
    LayerParams, data_fields=[f.name for f in dataclasses.fields(LayerParams)], meta_fields=[])

HIGHEST = lax.Precision.HIGHEST  # no TF32 / bf16 passes for float32 matmuls on GPU; no effect on CPU
# The matmul precision of what is being traced: HIGHEST, or None (JAX's default, as users run it: the
# default_precision mode, backends/modes.py). Set by `stack` from StaticBlock.precision, read at trace time.
_PRECISION: contextvars.ContextVar = contextvars.ContextVar("resconf_matmul_precision", default=HIGHEST)
PRECISIONS = {"highest": HIGHEST, "default": None}
FINAL = "final."  # names of the final norm's tensors, in the last layer's record only


@dataclass(frozen=True)
class StaticBlock:
    """What of a BlockConfig changes the traced program: the jit cache key. Scalars are traced instead
    (Scalars), fields a layer does not read are blanked, and what only adds or removes tensors (bias,
    norm_bias, layer_scale, the ReZero gate) is left to the parameters' pytree structure, which jit keys on
    anyway; so configurations that compute the same program share one compile. Depth is no field: it is
    the scanned axis's length."""

    placement: str
    norm: str
    sublayers: tuple[str, ...]
    parallel: bool
    shared_norm: bool  # False unless parallel
    final_norm: bool
    input_norm: bool = True  # False only for a pre layer without a norm before its branches (OLMo 2)
    branch_norm: bool = False  # a norm on each branch's output (sandwich, OLMo 2)
    activation: str = ""  # "" unless "mlp" in sublayers
    gelu: str = ""  # "" unless activation == "gelu"
    gated: bool = False
    n_heads: int = 0  # 0 unless "attention" in sublayers, and so on for the attention fields
    kv_heads: int = 0
    causal: bool = False
    qk_norm: bool = False
    qk_norm_scope: str = ""  # "" unless qk_norm; "head" or "projection"
    rope_base: float = 0.0  # 0.0 without RoPE; static because the angles are computed at trace time
    rope_dim: int = 0  # rotated dims of each head, 0 for all (widths come from the tensors, as in a TP shard)
    rope_interleaved: bool = False
    precision: str = "highest"  # of every matmul (PRECISIONS): "default" in the default_precision mode
    compute: str = ""  # the dtype sublayers compute in when not the stream's: "bfloat16" in the mixed mode

    @classmethod
    def of(cls, cfg: BlockConfig) -> "StaticBlock":
        mlp, attention = "mlp" in cfg.sublayers, "attention" in cfg.sublayers
        heads = attention or "cross_attention" in cfg.sublayers  # cross-attention reads only the head counts
        return cls(cfg.placement, cfg.norm, cfg.sublayers, cfg.parallel, cfg.parallel and cfg.shared_norm,
                   cfg.final_norm, input_norm=cfg.input_norm, branch_norm=cfg.branch_norm,
                   activation=cfg.activation if mlp else "",
                   gelu=cfg.gelu if mlp and cfg.activation == "gelu" else "",
                   gated=mlp and cfg.gated,
                   n_heads=cfg.n_heads if heads else 0,
                   kv_heads=cfg.kv_heads if heads else 0,
                   causal=attention and cfg.causal,
                   qk_norm=attention and cfg.qk_norm,
                   qk_norm_scope=cfg.qk_norm_scope if attention and cfg.qk_norm else "",
                   rope_base=cfg.rope_base if attention and cfg.rope else 0.0,
                   rope_dim=(cfg.rope_dim or 0) if attention and cfg.rope else 0,
                   rope_interleaved=attention and cfg.rope and cfg.rope_interleaved)

    @property
    def updates(self) -> tuple[tuple[str, ...], ...]:
        """The sublayers of one layer grouped by update (BlockConfig.updates)."""
        return (self.sublayers,) if self.parallel else tuple((kind,) for kind in self.sublayers)

    def norm_owner(self, kind: str) -> str:
        """Whose norm feeds sublayer `kind` (BlockConfig.norm_owner)."""
        return self.sublayers[0] if self.shared_norm else kind


class Scalars(NamedTuple):
    """The config's traced scalars (float64; each op casts them to its accumulator): drawing new values
    reuses the compile, and DeepNorm's alpha, which follows depth, is one of them."""

    eps: np.float64
    skip: np.float64  # cfg.skip: 1, DeepNorm's alpha, or skip_scale
    branch_scale: np.float64

    @classmethod
    def of(cls, cfg: BlockConfig) -> "Scalars":
        return cls(np.float64(cfg.eps), np.float64(cfg.skip), np.float64(cfg.branch_scale))


def accumulator(*dtypes) -> jnp.dtype:
    """float32 for low-precision inputs, else the widest input dtype."""
    return jnp.result_type(jnp.float32, *dtypes)


def scaled(a: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * a, multiplied in the accumulator and rounded once to a's dtype (a bfloat16 alpha would not
    be alpha; a scale of 1 is exact)."""
    acc = accumulator(a.dtype)
    return (a.astype(acc) * scale.astype(acc)).astype(a.dtype)


def linear(h: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """h @ w (+ b), accumulated in float32 or wider, rounded once to h's dtype."""
    y = jnp.matmul(h, w, precision=_PRECISION.get(), preferred_element_type=accumulator(h.dtype))
    return (y if b is None else y + b).astype(h.dtype)


def norm(x: jax.Array, weight: jax.Array, bias: jax.Array | None, kind: str, eps: jax.Array,
         out_dtype: jnp.dtype) -> jax.Array:
    """layernorm (x - mean) / sqrt(var + eps) * w (+ b), or rmsnorm x / sqrt(mean(x^2) + eps) * w,
    over the last axis; statistics in float32 or wider (float16 variance is a known mutant)."""
    acc = accumulator(x.dtype, out_dtype)
    h = x.astype(acc)
    if kind == "layernorm":
        h = h - jnp.mean(h, axis=-1, keepdims=True)
    y = h * lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + eps.astype(acc))
    y = y * weight.astype(acc)
    if bias is not None:
        y = y + bias.astype(acc)
    return y.astype(out_dtype)


def layer_norm(x: jax.Array, s, static: StaticBlock, sc: Scalars) -> jax.Array:
    """The norm whose gain and bias are s.norm_weight, s.norm_bias: a sublayer's, or the final norm."""
    return norm(x, s.norm_weight, s.norm_bias, static.norm, sc.eps, x.dtype)


# --- the branches F(h): (B, T, C) -> (B, T, C) ---

def linear_branch(h: jax.Array, s, static: StaticBlock, sc: Scalars) -> jax.Array:
    return linear(h, s.w_out, s.b_out)


ACTIVATIONS = {"relu": jax.nn.relu, "silu": jax.nn.silu,
               "gelu:tanh": lambda u: jax.nn.gelu(u, approximate=True),
               "gelu:exact": lambda u: jax.nn.gelu(u, approximate=False)}


def activation(u: jax.Array, static: StaticBlock) -> jax.Array:
    """The mlp's activation, in the accumulator, rounded once to u's dtype."""
    name = f"gelu:{static.gelu}" if static.activation == "gelu" else static.activation
    return ACTIVATIONS[name](u.astype(accumulator(u.dtype))).astype(u.dtype)


def mlp(h: jax.Array, s, static: StaticBlock, sc: Scalars) -> jax.Array:
    """down(act(h W_up)), or down(act(h W_gate) * h W_up) when gated (SwiGLU, GeGLU); numpy_ref.mlp."""
    u = linear(h, s.w_up, s.b_up)  # (B, T, H)
    a = activation(linear(h, s.w_gate, s.b_gate), static) * u if static.gated else activation(u, static)
    return linear(a, s.w_down, s.b_down)  # (B, T, C)


def rope(x: jax.Array, base: float, dim: int, interleaved: bool) -> jax.Array:
    """Rotary embedding of the first `dim` dims (all when 0) of x (B, T, heads, hd): each pair (x1, x2) -> [x1 cos - x2 sin,
    x2 cos + x1 sin] at angle t * base^(-2i/dim); pairs (i, i + dim/2) half-split (NeoX, Llama) or (2i, 2i + 1)
    interleaved (GPT-J); the other dims pass through. The angles come from NumPy float64 at trace time (T and
    dim are static), then cast: float32 angles up to t = 256 would be off by more than float32 rounding of cos
    and sin."""
    T, dim = x.shape[1], dim or x.shape[-1]
    angles = np.arange(T)[:, None] * base ** (-np.arange(0, dim, 2) / dim)  # (T, dim/2), numpy_ops.rope_angles
    acc = accumulator(x.dtype)
    cos = jnp.asarray(np.cos(angles)[:, None, :], dtype=acc)  # (T, 1, dim/2): broadcast over heads
    sin = jnp.asarray(np.sin(angles)[:, None, :], dtype=acc)
    rot = x[..., :dim].astype(acc)
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else jnp.split(rot, 2, axis=-1)
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    rotated = jnp.stack([y1, y2], axis=-1).reshape(rot.shape) if interleaved else jnp.concatenate([y1, y2], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., dim:]], axis=-1)


def heads(t: jax.Array, n: int) -> jax.Array:
    B, T, width = t.shape
    return t.reshape(B, T, n, width // n)  # (B, T, n, hd); no -1: B or T may be 0


def attention_inputs(h: jax.Array, s, static: StaticBlock, sc: Scalars):
    """q (B, T, nh, hd), k and v (B, T, nkv, hd): projected, QK-normed (RMSNorm over each head, or over the
    whole projection before the heads split (OLMo 2), before RoPE), rotated; numpy_ref._attention_inputs."""
    q, k = linear(h, s.wq, s.bq), linear(h, s.wk, s.bk)  # (B, T, nh hd), (B, T, nkv hd)
    if static.qk_norm_scope == "projection":
        q = norm(q, s.q_norm_weight, None, "rmsnorm", sc.eps, q.dtype)
        k = norm(k, s.k_norm_weight, None, "rmsnorm", sc.eps, k.dtype)
    q, k = heads(q, static.n_heads), heads(k, static.kv_heads)
    v = heads(linear(h, s.wv, s.bv), static.kv_heads)
    if static.qk_norm_scope == "head":
        q = norm(q, s.q_norm_weight, None, "rmsnorm", sc.eps, q.dtype)
        k = norm(k, s.k_norm_weight, None, "rmsnorm", sc.eps, k.dtype)
    if static.rope_base:
        q = rope(q, static.rope_base, static.rope_dim, static.rope_interleaved)
        k = rope(k, static.rope_base, static.rope_dim, static.rope_interleaved)
    return q, k, v


def attention(h: jax.Array, s, static: StaticBlock, sc: Scalars) -> jax.Array:
    """Self-attention, causal or bidirectional."""
    return attend(h, *attention_inputs(h, s, static, sc), s, static, static.causal)


def cross_attention(h: jax.Array, s, static: StaticBlock, sc: Scalars) -> jax.Array:
    """An encoder-decoder's cross-attention: queries from h, keys and values from the memory s.memory (S, C),
    the encoder's output, shared by the batch (config.py says why); every memory token seen, no RoPE, no
    QK-norm; numpy_ref.cross_attention."""
    m = jnp.broadcast_to(s.memory, h.shape[:1] + s.memory.shape)  # (B, S, C)
    q = heads(linear(h, s.wq, s.bq), static.n_heads)  # (B, T, nh, hd)
    k, v = (heads(linear(m, w, b), static.kv_heads) for w, b in ((s.wk, s.bk), (s.wv, s.bv)))  # (B, S, nkv, hd)
    return attend(h, q, k, v, s, static, causal=False)


def attend(h: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, s, static: StaticBlock, causal: bool
           ) -> jax.Array:
    """out(softmax(q k^T / sqrt(hd)) v) for q (B, T, nh, hd), k and v (B, S, nkv, hd); causal needs S = T. With
    grouped queries, kv head j serves query heads j*groups .. (j+1)*groups - 1 (np.repeat's order): the query
    heads are viewed as (nkv, groups)."""
    B, T, _ = h.shape
    acc = accumulator(h.dtype)
    hd = q.shape[-1]
    q = q.reshape(B, T, static.kv_heads, static.n_heads // static.kv_heads, hd)  # (B, T, nkv, G, hd)
    # q is scaled before the product, as flax does: the logits then come straight out of the dot, so
    # softmax's max and x - max read the same rounded values. (Scaling the logits instead let XLA:CPU
    # recompute x * scale in two fusions and contract one into an FMA: exp(+1e3) = inf, then NaN, for
    # |logits| above ~1e18 in float64.)
    q = q.astype(acc) / math.sqrt(hd)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(acc), precision=_PRECISION.get())  # (B, nkv, G, T, S)
    if causal:
        logits = jnp.where(jnp.tril(jnp.ones((T, T), dtype=bool)), logits, -jnp.inf)  # query t sees s <= t
    probs = jax.nn.softmax(logits, axis=-1)
    # probs @ v over all keys, as dot_product_attention does: a masked 0 times a later token's NaN is NaN
    # (conformance/xfails/jax.toml, BI-3)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(acc), precision=_PRECISION.get()).astype(h.dtype)
    return linear(out.reshape(B, T, static.n_heads * hd), s.wo, s.bo)  # (B, T, C)


BRANCHES = {"linear": linear_branch, "mlp": mlp, "attention": attention, "cross_attention": cross_attention}


def write(kind: str, s, h: jax.Array, static: StaticBlock, sc: Scalars) -> jax.Array:
    """w = branch_scale * layer_scale * N_out(F(h)): one rounding of F (normed when static.branch_norm) times the
    combined scale; numpy_ref.write."""
    f = BRANCHES[kind](h, s, static, sc)  # (B, T, C)
    if static.branch_norm:
        f = norm(f, s.branch_norm_weight, s.branch_norm_bias, static.norm, sc.eps, f.dtype)
    scale = sc.branch_scale.astype(accumulator(f.dtype))
    return scaled(f, scale if s.layer_scale is None else scale * s.layer_scale.astype(scale.dtype))


# --- one update of the stream, and a layer: numpy_ref.update_forward ---

def update(x: jax.Array, p: LayerParams, kinds: tuple[str, ...], static: StaticBlock, sc: Scalars
           ) -> tuple[jax.Array, jax.Array]:
    """(y, w): the new stream state and the write next to the skip (before any ReZero gate). The skip
    product and the residual add are in x's dtype; sublayers read it in static.compute when set (mixed)."""
    sx = scaled(x, sc.skip)  # (B, T, C)
    p, h = narrowed(p, static), narrowed(x, static)
    if static.placement == "pre":  # s x + sum_k w_k(N_owner(k)(x)); a shared norm is computed once
        normed = {owner: layer_norm(h, p.sub(owner), static, sc) if static.input_norm else h
                  for owner in dict.fromkeys(static.norm_owner(k) for k in kinds)}
        writes = [write(k, p.sub(k), normed[static.norm_owner(k)], static, sc).astype(x.dtype) for k in kinds]
        w = sum(writes[1:], writes[0])
        return sx + w, w
    s = p.sub(kinds[0])
    w = write(kinds[0], s, h, static, sc).astype(x.dtype)  # every other placement feeds the raw stream to the branch
    if static.placement in ("post", "deepnorm"):
        # N(s x + w(x)); deepnorm's s is alpha
        return layer_norm(narrowed(sx + w, static), s, static, sc).astype(x.dtype), w
    if static.placement == "rezero":
        return sx + s.gate * w, w
    return w, w  # plain: no skip


def narrowed(a, static: StaticBlock):
    """An array, or every tensor of a LayerParams, in static.compute (unchanged without one)."""
    if not static.compute:
        return a
    dtype = jnp.dtype(static.compute)
    return a.map(lambda t: t.astype(dtype)) if isinstance(a, LayerParams) else a.astype(dtype)


def layer(x: jax.Array, p: LayerParams, static: StaticBlock, sc: Scalars):
    """One layer's updates: (x after the layer, states (k, B, T, C), writes (k, B, T, C)), k updates."""
    states, writes = [], []
    for kinds in static.updates:
        x, w = update(x, p, kinds, static, sc)
        states.append(x)
        writes.append(w)
    return x, jnp.stack(states), jnp.stack(writes)


# --- the stack: numpy_ref.stack_forward ---

def stack(x: jax.Array, layers: LayerParams, final: LayerParams | None, static: StaticBlock, sc: Scalars,
          trace: bool = True):
    """Run the layers stacked along axis 0 of every tensor of `layers`, then the final norm (its tensors
    `final`, split out of the scan). Returns (output, states x_1..x_U (U, B, T, C), writes (U, B, T, C),
    final norm's output or None); without `trace` the states and writes are None (a VJP needs neither)."""
    def step(carry: jax.Array, p: LayerParams):
        nxt, states, writes = layer(carry, p, static, sc)
        return nxt, ((states, writes) if trace else None)

    token = _PRECISION.set(PRECISIONS[static.precision])  # read while this traces
    try:
        x_last, ys = lax.scan(step, x, layers)
        out = (layer_norm(narrowed(x_last, static), narrowed(final, static).sub("final"), static, sc).astype(x.dtype)
               if static.final_norm else None)
    finally:
        _PRECISION.reset(token)
    if not trace:
        return x_last if out is None else out, None, None, out
    states, writes = (a.reshape((a.shape[0] * a.shape[1],) + x.shape) for a in ys)  # (L, k, B, T, C) -> (L k, B, T, C)
    return x_last if out is None else out, states, writes, out


def stack_output(x: jax.Array, layers: LayerParams, final: LayerParams | None, static: StaticBlock,
                 sc: Scalars) -> jax.Array:
    """What stack_vjp's cotangent is on: the final norm's output, else x_U."""
    return stack(x, layers, final, static, sc, trace=False)[0]


def fused_add_norm(x: jax.Array, residual: jax.Array, weight: jax.Array, bias: jax.Array | None,
                   eps: jax.Array, kind: str, residual_in_fp32: bool) -> tuple[jax.Array, jax.Array]:
    """(norm(x + residual) * weight (+ bias), x + residual). The sum is taken in the wider of its inputs
    and rounded once to the residual dtype (x's dtype, or float32 when residual_in_fp32); the norm reads
    that rounded sum, with statistics in float32 or wider, and writes x's dtype."""
    wide = jnp.result_type(x.dtype, residual.dtype)
    new_residual = (x.astype(wide) + residual.astype(wide)).astype(jax_residual_dtype(x.dtype, residual_in_fp32))
    return norm(new_residual, weight, bias, kind, eps, x.dtype), new_residual

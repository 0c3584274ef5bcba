"""The residual block in JAX: norms, branches, the five placements, a depth-L stack as one lax.scan,
and fused add+norm. Pure functions of jax arrays; jax_backend.py jits and caches them.

Why a scan: jit(vjp) of an unrolled Python loop compiles in time growing with depth (233 s at L=128),
a scan over parameters stacked along a leading L axis compiles once for every depth (< 1 s).

Low precision (bfloat16, float16) is computed the way frameworks do on CPU: every op accumulates in
float32 and rounds its output once to the input dtype; the residual add itself is done in the input
dtype. float64 stays float64 throughout (jax.nn.dot_product_attention is not used because it always
takes its softmax in float32).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from resconf.backends.config import BlockConfig
from resconf.backends.params import BlockParams

# BlockParams as a pytree: stacked parameters go through lax.scan and jax.vjp with their own field
# names, and absent tensors (None) are empty subtrees. Registered once, here, only when JAX is in use.
jax.tree_util.register_dataclass(
    BlockParams, data_fields=[f.name for f in dataclasses.fields(BlockParams)], meta_fields=[])

HIGHEST = lax.Precision.HIGHEST  # no TF32 / bf16 passes for float32 matmuls on GPU; no effect on CPU


@dataclass(frozen=True)
class StaticBlock:
    """What of a BlockConfig changes the traced program: the jit cache key. eps and the DeepNorm alpha
    are traced scalars instead, and fields a branch does not read are blanked, so configurations that
    compute the same program share one compile."""

    placement: str
    norm: str
    branch: str
    gelu: str  # "" unless branch == "mlp"
    n_heads: int  # 0 unless branch == "attention"

    @classmethod
    def of(cls, cfg: BlockConfig) -> "StaticBlock":
        return cls(cfg.placement, cfg.norm, cfg.branch,
                   cfg.gelu if cfg.branch == "mlp" else "",
                   cfg.n_heads if cfg.branch == "attention" else 0)


def accumulator(*dtypes) -> jnp.dtype:
    """float32 for low-precision inputs, else the widest input dtype."""
    return jnp.result_type(jnp.float32, *dtypes)


def linear(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """h @ w + b, accumulated in float32 or wider, rounded once to h's dtype."""
    y = jnp.matmul(h, w, precision=HIGHEST, preferred_element_type=accumulator(h.dtype))
    return (y + b).astype(h.dtype)


def norm(x: jax.Array, weight: jax.Array, bias: jax.Array | None, kind: str, eps: jax.Array,
         out_dtype: jnp.dtype) -> jax.Array:
    """layernorm (x - mean) / sqrt(var + eps) * w + b, or rmsnorm x / sqrt(mean(x^2) + eps) * w,
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


def mlp(h: jax.Array, p: BlockParams, gelu: str) -> jax.Array:
    u = linear(h, p.w_in, p.b_in)  # (B, T, H)
    u = jax.nn.gelu(u.astype(accumulator(u.dtype)), approximate=gelu == "tanh").astype(h.dtype)
    return linear(u, p.w_out, p.b_out)  # (B, T, C)


def causal_attention(h: jax.Array, p: BlockParams, n_heads: int) -> jax.Array:
    """Multi-head causal self-attention, packed qkv = h @ w_in + b_in split as [q | k | v]."""
    B, T, C = h.shape
    acc = accumulator(h.dtype)
    q, k, v = (t.reshape(B, T, n_heads, C // n_heads)  # (B, T, nh, hd)
               for t in jnp.split(linear(h, p.w_in, p.b_in), 3, axis=-1))
    # q is scaled before the product, as flax does: the logits then come straight out of the dot, so
    # softmax's max and x - max read the same rounded values. (Scaling the logits instead let XLA:CPU
    # recompute x * scale in two fusions and contract one into an FMA: exp(+1e3) = inf, then NaN, for
    # |logits| above ~1e18 in float64.)
    q = q.astype(acc) / math.sqrt(C // n_heads)
    logits = jnp.einsum("btnd,bsnd->bnts", q, k.astype(acc), precision=HIGHEST)  # (B, nh, T, T)
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))  # query t sees keys s <= t
    probs = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
    out = jnp.einsum("bnts,bsnd->btnd", probs, v.astype(acc), precision=HIGHEST).astype(h.dtype)
    return linear(out.reshape(B, T, C), p.w_out, p.b_out)  # (B, T, C)


def branch(h: jax.Array, p: BlockParams, static: StaticBlock) -> jax.Array:
    if static.branch == "mlp":
        return mlp(h, p, static.gelu)
    if static.branch == "attention":
        return causal_attention(h, p, static.n_heads)
    return linear(h, p.w_out, p.b_out)


def block(x: jax.Array, p: BlockParams, static: StaticBlock, eps: jax.Array, alpha: jax.Array
          ) -> tuple[jax.Array, jax.Array]:
    """One residual block: (x_next, F) where F is the branch output (before any ReZero gate)."""
    def N(t: jax.Array) -> jax.Array:
        return norm(t, p.norm_weight, p.norm_bias, static.norm, eps, t.dtype)

    if static.placement == "pre":
        f = branch(N(x), p, static)
        return x + f, f
    f = branch(x, p, static)
    if static.placement == "post":
        return N(x + f), f
    if static.placement == "rezero":
        return x + p.gate * f, f
    if static.placement == "deepnorm":
        scaled = (x.astype(accumulator(x.dtype)) * alpha.astype(accumulator(x.dtype))).astype(x.dtype)
        return N(scaled + f), f
    return f, f  # plain: no skip


def stack(x: jax.Array, params: BlockParams, static: StaticBlock, eps: jax.Array, alpha: jax.Array
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Run the blocks whose parameters are stacked along axis 0 of every leaf of `params`.
    Returns (x_L, states x_1..x_L (L, B, T, C), branch outputs (L, B, T, C))."""
    def step(carry: jax.Array, p: BlockParams):
        nxt, f = block(carry, p, static, eps, alpha)
        return nxt, (nxt, f)

    x_last, (states, branches) = lax.scan(step, x, params)
    return x_last, states, branches


def fused_add_norm(x: jax.Array, residual: jax.Array, weight: jax.Array, bias: jax.Array | None,
                   eps: jax.Array, kind: str, residual_in_fp32: bool) -> tuple[jax.Array, jax.Array]:
    """(norm(x + residual) * weight (+ bias), x + residual). The sum is taken in the wider of its inputs
    and rounded once to the residual dtype (x's dtype, or float32 when residual_in_fp32); the norm reads
    that rounded sum, with statistics in float32 or wider, and writes x's dtype."""
    residual_dtype = jnp.float32 if residual_in_fp32 else x.dtype
    wide = jnp.result_type(x.dtype, residual.dtype)
    new_residual = (x.astype(wide) + residual.astype(wide)).astype(residual_dtype)
    return norm(new_residual, weight, bias, kind, eps, x.dtype), new_residual

"""The oracle's operations in float64 NumPy: each forward next to its hand-derived VJP.

A flat module of short functions (in the style of jax/_src/lax_reference.py), meant to be checked by eye.
A VJP takes the forward's inputs and the cotangent g of the output and returns the cotangents of the inputs,
in argument order. It recomputes what it needs instead of saving it, so each function reads on its own.
Shapes: (..., C) is any leading axes (batch, tokens) and a feature axis last.

@op marks what a framework runs as one operation (one kernel, one rounding of its output). It changes
nothing here; it lets the positive controls and the error budgets' baseline run this same code in a
narrower arithmetic (backends/oracle/emulated.py).
"""
from __future__ import annotations

import math

import numpy as np

from resconf.backends.oracle.emulated import op


@op
def sum_leading(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last: how a parameter shared by all tokens collects its gradient.
    Pairwise: NumPy sums an axis pairwise only when it is contiguous; down axis 0 it adds one token after
    another, whose error grows as sqrt(n) (48 u over 8192 tokens, against 2 u pairwise)."""
    return a.reshape(-1, a.shape[-1]).T.copy().sum(axis=-1)  # (C,); copy() lays the token axis out contiguously


# --- linear: y = x @ w + b, w of shape (in, out) ---

@op
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    return x @ w if b is None else x @ w + b  # (..., out)


@op
def linear_vjp(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: np.ndarray):
    """(dx, dw, db); db is None without a bias."""
    dx = g @ w.T  # (..., in)
    dw = x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])  # (in, out): sum over tokens of x^T g
    return dx, dw, None if b is None else sum_leading(g)


# --- GELU, tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi) ---

_C = math.sqrt(2.0 / math.pi)
_K = 0.044715


@op
def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_C * (x + _K * (x * x * x))))  # x * x * x: NumPy's x**3 is 150x slower


@op
def gelu_tanh_vjp(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    t = np.tanh(_C * (x + _K * (x * x * x)))
    dt_dx = (1.0 - t**2) * _C * (1.0 + 3.0 * _K * x**2)  # tanh' = 1 - tanh^2, chain rule on the cubic
    return g * (0.5 * (1.0 + t) + 0.5 * x * dt_dx)  # product rule on 0.5 x (1 + t)


# --- GELU, exact: x Phi(x), Phi the standard normal CDF (NumPy has no erf: math.erf elementwise) ---

_erf = np.vectorize(math.erf, otypes=[np.float64])


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)


@op
def gelu_exact(x: np.ndarray) -> np.ndarray:
    return x * normal_cdf(x)


@op
def gelu_exact_vjp(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g * (normal_cdf(x) + x * normal_pdf(x))  # (x Phi)' = Phi + x phi


# --- ReLU and SiLU (x sigmoid(x), Swish-1) ---

@op
def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


@op
def relu_vjp(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.where(x > 0.0, g, 0.0)  # derivative 0 at x = 0, as every framework takes it


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), written with e = exp(-|x|) <= 1: no overflow, and no cancellation for x << 0."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


@op
def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


@op
def silu_vjp(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    s = sigmoid(x)
    return g * (s + x * s * (1.0 - s))  # (x s)' = s + x s (1 - s)


# --- norms over the last axis, then the affine w * xhat (+ b); b may be None ---

def _affine(xhat: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    return xhat * w if b is None else xhat * w + b


def _affine_vjp(xhat: np.ndarray, b: np.ndarray | None, g: np.ndarray):
    """(dw, db) of w * xhat + b."""
    return sum_leading(g * xhat), None if b is None else sum_leading(g)


def _layernorm_stats(x: np.ndarray, eps: float):
    """xhat = (x - mean) * rstd and rstd = 1 / sqrt(biased var + eps), per token."""
    xc = x - x.mean(axis=-1, keepdims=True)  # (..., C)
    rstd = 1.0 / np.sqrt(np.mean(xc**2, axis=-1, keepdims=True) + eps)  # (..., 1)
    return xc * rstd, rstd


@op
def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float) -> np.ndarray:
    xhat, _ = _layernorm_stats(x, eps)
    return _affine(xhat, w, b)


@op
def layernorm_vjp(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float, g: np.ndarray):
    """(dx, dw, db). With dxhat = g w: dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)); the two
    means are the gradients through the mean and through the variance."""
    xhat, rstd = _layernorm_stats(x, eps)
    dxhat = g * w
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return (dx, *_affine_vjp(xhat, b, g))


def _rmsnorm_stats(x: np.ndarray, eps: float):
    """xhat = x * rinv and rinv = 1 / sqrt(mean(x^2) + eps), per token."""
    rinv = 1.0 / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)  # (..., 1)
    return x * rinv, rinv


@op
def rmsnorm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float) -> np.ndarray:
    xhat, _ = _rmsnorm_stats(x, eps)
    return _affine(xhat, w, b)


@op
def rmsnorm_vjp(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float, g: np.ndarray):
    """(dx, dw, db). With dxhat = g w: dx = rinv (dxhat - xhat mean(dxhat xhat)) (the layernorm formula
    without the centering term)."""
    xhat, rinv = _rmsnorm_stats(x, eps)
    dxhat = g * w
    dx = rinv * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return (dx, *_affine_vjp(xhat, b, g))


# --- softmax over the last axis, max subtracted so exp never overflows ---

@op
def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - np.max(s, axis=-1, keepdims=True, initial=-np.inf))  # initial: an empty axis is no error
    return e / np.sum(e, axis=-1, keepdims=True)


@op
def softmax_vjp(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Written with the output p = softmax(s): ds = p (g - <g, p>)."""
    return p * (g - np.sum(g * p, axis=-1, keepdims=True))


# --- multi-head attention on split heads: q (B, nh, T, hd), k and v (B, nh, S, hd) ---

def split_heads(a: np.ndarray, n_heads: int) -> np.ndarray:
    B, T, C = a.shape
    return a.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)  # (B, nh, T, hd)


def merge_heads(a: np.ndarray) -> np.ndarray:
    B, nh, T, hd = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)  # (B, T, C)


def repeat_kv(a: np.ndarray, groups: int) -> np.ndarray:
    """Grouped-query attention: kv head j serves query heads j*groups .. (j+1)*groups - 1."""
    return np.repeat(a, groups, axis=1)  # (B, nkv, T, hd) -> (B, nkv * groups, T, hd)


def repeat_kv_vjp(g: np.ndarray, groups: int) -> np.ndarray:
    B, nh, T, hd = g.shape
    return g.reshape(B, nh // groups, groups, T, hd).sum(axis=2)  # each kv head collects its group's gradient


def probs(q: np.ndarray, k: np.ndarray, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(hd)); causal masks key j > query t out (zero above the diagonal)."""
    T = q.shape[-2]
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    if causal:
        s = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, s)
    return softmax(s)


def causal_weighted_sum(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """o[t] = sum_{j <= t} p[t, j] v[j]. One query at a time, so a NaN in a later token's v cannot reach
    an earlier token through 0 * NaN = NaN (as it would in p @ v)."""
    o = np.zeros(p.shape[:-1] + v.shape[-1:])  # (B, nh, T, hd)
    for t in range(p.shape[-2]):
        o[..., t : t + 1, :] = p[..., t : t + 1, : t + 1] @ v[..., : t + 1, :]  # (B, nh, 1, hd)
    return o


@op
def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    p = probs(q, k, causal)  # (B, nh, T, T)
    return causal_weighted_sum(p, v) if causal else p @ v  # (B, nh, T, hd)


@op
def attention_vjp(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, causal: bool, g: np.ndarray):
    """(dq, dk, dv), given the forward's output o. With o = p v, p = softmax(s), s = scale q k^T (masked
    entries have p = 0, so they get no gradient): dv = p^T g, dp = g v^T, ds = p (dp - D), dq = scale ds k,
    dk = scale ds^T q. D = <g, o> per query equals sum_j p dp (the softmax VJP), taken from the saved output
    as FlashAttention-2 and PyTorch's CPU kernel do: in a narrow dtype o is rounded, and near-uniform
    attention (dp - D a small difference) turns that rounding into a large relative error of dq (seen: 1.2
    in bfloat16 with torch's default kernel, 0.03 with its math kernel), a legitimate one."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = probs(q, k, causal)
    D = np.sum(g * o, axis=-1, keepdims=True)  # (B, nh, T, 1)
    ds = p * (g @ v.swapaxes(-1, -2) - D)  # (B, nh, T, T)
    return scale * ds @ k, scale * ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ g


# --- rotary position embeddings: rotate pairs of a head's first `dim` dims by angle t * base^(-2i/dim) ---
# Half-split (GPT-NeoX, Llama) pairs dim i with i + dim/2; interleaved (GPT-J's rotate_every_two) pairs 2i
# with 2i + 1. Dims from `dim` on pass through unrotated (partial rotary: GPT-J, GPT-NeoX's rotary_pct).

def rope_angles(T: int, dim: int, base: float) -> np.ndarray:
    inv_freq = base ** (-np.arange(0, dim, 2) / dim)  # (dim/2,)
    return np.arange(T)[:, None] * inv_freq  # (T, dim/2)


def rope_pairs(x: np.ndarray, interleaved: bool) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) coordinate of every rotated pair, each (..., dim/2)."""
    return (x[..., 0::2], x[..., 1::2]) if interleaved else tuple(np.split(x, 2, axis=-1))


def rope_unpairs(a: np.ndarray, b: np.ndarray, interleaved: bool) -> np.ndarray:
    """rope_pairs' inverse: the pairs' coordinates back in their places, (..., dim)."""
    if interleaved:
        return np.stack([a, b], axis=-1).reshape(a.shape[:-1] + (2 * a.shape[-1],))
    return np.concatenate([a, b], axis=-1)


def _rotate(x: np.ndarray, base: float, dim: int | None, interleaved: bool, sign: float) -> np.ndarray:
    """Each pair (x1, x2) of the first dim dims -> (x1 cos - x2 sin, x2 cos + x1 sin) at angle sign * a."""
    dim = x.shape[-1] if dim is None else dim
    a = sign * rope_angles(x.shape[-2], dim, base)  # (T, dim/2)
    x1, x2 = rope_pairs(x[..., :dim], interleaved)
    rotated = rope_unpairs(x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a), interleaved)
    return np.concatenate([rotated, x[..., dim:]], axis=-1)  # (..., T, hd)


@op
def rope(x: np.ndarray, base: float, dim: int | None = None, interleaved: bool = False) -> np.ndarray:
    """x (..., T, hd) with its first `dim` dims (all when None) rotated pairwise."""
    return _rotate(x, base, dim, interleaved, 1.0)


@op
def rope_vjp(x: np.ndarray, base: float, g: np.ndarray, dim: int | None = None,
             interleaved: bool = False) -> np.ndarray:
    """A rotation's transpose is the rotation by minus the angle; the unrotated dims pass g through."""
    return _rotate(g, base, dim, interleaved, -1.0)

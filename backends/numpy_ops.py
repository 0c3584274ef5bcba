"""The oracle's operations in float64 NumPy: each forward next to its hand-derived VJP.

A flat module of short functions (in the style of jax/_src/lax_reference.py), meant to be checked by eye.
A VJP takes the forward's inputs and the cotangent g of the output and returns the cotangents of the inputs,
in argument order. It recomputes what it needs instead of saving it, so each function reads on its own.
Shapes: (..., C) is any leading axes (batch, tokens) and a feature axis last.

@op marks what a framework runs as one operation (one kernel, one rounding of its output). It changes
nothing here; it lets the positive controls and the error budgets' baseline run this same code in a
narrower arithmetic (backends/emulated.py).
"""
from __future__ import annotations

import math

import numpy as np

from resconf.backends.emulated import op


@op
def sum_leading(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last: how a parameter shared by all tokens collects its gradient.
    Pairwise: NumPy sums an axis pairwise only when it is contiguous; down axis 0 it adds one token after
    another, whose error grows as sqrt(n) (48 u over 8192 tokens, against 2 u pairwise)."""
    return a.reshape(-1, a.shape[-1]).T.copy().sum(axis=-1)  # (C,); copy() lays the token axis out contiguously


# --- linear: y = x @ w + b, w of shape (in, out) ---

@op
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ w + b  # (..., out)


@op
def linear_vjp(x: np.ndarray, w: np.ndarray, b: np.ndarray, g: np.ndarray):
    dx = g @ w.T  # (..., in)
    dw = x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])  # (in, out): sum over tokens of x^T g
    return dx, dw, sum_leading(g)


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


# --- causal multi-head self-attention on packed qkv = [q | k | v] ---

def split_heads(a: np.ndarray, n_heads: int) -> np.ndarray:
    B, T, C = a.shape
    return a.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)  # (B, nh, T, hd)


def merge_heads(a: np.ndarray) -> np.ndarray:
    B, nh, T, hd = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)  # (B, T, C)


def _split_qkv(qkv: np.ndarray, n_heads: int):
    return tuple(split_heads(a, n_heads) for a in np.split(qkv, 3, axis=-1))  # 3 x (B, nh, T, hd)


def causal_probs(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(hd)) with key j > query t masked out: zero above the diagonal."""
    T = q.shape[-2]
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    return softmax(np.where(future, -np.inf, s))


def causal_weighted_sum(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """o[t] = sum_{j <= t} p[t, j] v[j]. One query at a time, so a NaN in a later token's v cannot reach
    an earlier token through 0 * NaN = NaN (as it would in p @ v)."""
    o = np.zeros(p.shape[:-1] + v.shape[-1:])  # (B, nh, T, hd)
    for t in range(p.shape[-2]):
        o[..., t : t + 1, :] = p[..., t : t + 1, : t + 1] @ v[..., : t + 1, :]  # (B, nh, 1, hd)
    return o


@op
def causal_attention(qkv: np.ndarray, n_heads: int) -> np.ndarray:
    q, k, v = _split_qkv(qkv, n_heads)  # (B, nh, T, hd)
    return merge_heads(causal_weighted_sum(causal_probs(q, k), v))  # (B, T, C)


@op
def causal_attention_vjp(qkv: np.ndarray, n_heads: int, g: np.ndarray) -> np.ndarray:
    """dqkv (B, T, 3C). With o = p v, p = softmax(s), s = scale q k^T (masked entries have p = 0,
    so they get no gradient): dv = p^T do, dp = do v^T, ds = softmax_vjp, dq = scale ds k, dk = scale ds^T q."""
    q, k, v = _split_qkv(qkv, n_heads)
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = causal_probs(q, k)  # (B, nh, T, T)
    do = split_heads(g, n_heads)  # (B, nh, T, hd)
    dv = p.swapaxes(-1, -2) @ do
    ds = softmax_vjp(p, do @ v.swapaxes(-1, -2))  # (B, nh, T, T)
    dq = scale * ds @ k
    dk = scale * ds.swapaxes(-1, -2) @ q
    return np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)  # (B, T, 3C)

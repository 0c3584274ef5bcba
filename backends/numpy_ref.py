"""The float64 oracle: `NumpyReference`, the backend every other backend is compared with.

Blocks are composed by hand from resconf.backends.numpy_ops: each placement's forward sits next to its VJP, and a
stack's VJP is reverse accumulation over the saved trajectory x_0 .. x_L. Whatever dtype is asked for, it
computes in float64 (inputs arrive already rounded to that dtype), so it is the exact function of those
inputs up to float64 rounding. It is never fast; it is meant to be checked by eye, and against central finite
differences with `fd_directional_check` (tests/test_oracle.py, and the suite's GR-4).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from resconf.backends import numpy_ops as ops
from resconf.backends.base import Backend, Capabilities, FusedGrads, StackGrads, StackTrace, dtype_error
from resconf.backends.config import DTYPES, FUSED_KINDS, BlockConfig
from resconf.backends.dtypes import round_to
from resconf.backends.fused_args import residual_dtype
from resconf.backends.params import BlockParams

NORM = {"layernorm": ops.layernorm, "rmsnorm": ops.rmsnorm}
NORM_VJP = {"layernorm": ops.layernorm_vjp, "rmsnorm": ops.rmsnorm_vjp}


# --- gradients as BlockParams: every field of the block present, zeros where a part does not touch it ---

def zero_grads(p: BlockParams) -> BlockParams:
    return p.map(np.zeros_like)


def add_grads(a: BlockParams, b: BlockParams) -> BlockParams:
    return dataclasses.replace(a, **{name: t + getattr(b, name) for name, t in a.items()})


# --- the block's parts: norm N and branch F, each with its VJP -> (d input, BlockParams of gradients) ---

def norm(cfg: BlockConfig, p: BlockParams, x: np.ndarray) -> np.ndarray:
    return NORM[cfg.norm](x, p.norm_weight, p.norm_bias, cfg.eps)  # (B, T, C)


def norm_vjp(cfg: BlockConfig, p: BlockParams, x: np.ndarray, g: np.ndarray):
    dx, dw, db = NORM_VJP[cfg.norm](x, p.norm_weight, p.norm_bias, cfg.eps, g)
    return dx, dataclasses.replace(zero_grads(p), norm_weight=dw, norm_bias=db)


def _inner(cfg: BlockConfig, u: np.ndarray) -> np.ndarray:
    """What sits between the branch's two linears: GELU (mlp) or causal attention on packed qkv."""
    if cfg.branch == "attention":
        return ops.causal_attention(u, cfg.n_heads)  # (B, T, 3C) -> (B, T, C)
    return ops.gelu_tanh(u) if cfg.gelu == "tanh" else ops.gelu_exact(u)  # (B, T, H)


def _inner_vjp(cfg: BlockConfig, u: np.ndarray, g: np.ndarray) -> np.ndarray:
    if cfg.branch == "attention":
        return ops.causal_attention_vjp(u, cfg.n_heads, g)
    return ops.gelu_tanh_vjp(u, g) if cfg.gelu == "tanh" else ops.gelu_exact_vjp(u, g)


def branch(cfg: BlockConfig, p: BlockParams, h: np.ndarray) -> np.ndarray:
    """F(h): linear = h @ w_out + b_out; mlp and attention = out_proj(inner(in_proj(h)))."""
    if cfg.branch == "linear":
        return ops.linear(h, p.w_out, p.b_out)  # (B, T, C)
    u = ops.linear(h, p.w_in, p.b_in)  # (B, T, H) or (B, T, 3C)
    return ops.linear(_inner(cfg, u), p.w_out, p.b_out)  # (B, T, C)


def branch_vjp(cfg: BlockConfig, p: BlockParams, h: np.ndarray, g: np.ndarray):
    grads = zero_grads(p)
    if cfg.branch == "linear":
        dh, dw_out, db_out = ops.linear_vjp(h, p.w_out, p.b_out, g)
        return dh, dataclasses.replace(grads, w_out=dw_out, b_out=db_out)
    u = ops.linear(h, p.w_in, p.b_in)
    da, dw_out, db_out = ops.linear_vjp(_inner(cfg, u), p.w_out, p.b_out, g)
    dh, dw_in, db_in = ops.linear_vjp(h, p.w_in, p.b_in, _inner_vjp(cfg, u, da))
    return dh, dataclasses.replace(grads, w_in=dw_in, b_in=db_in, w_out=dw_out, b_out=db_out)


# --- the five placements ---

def block_forward(cfg: BlockConfig, p: BlockParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, f): the block's output and its branch output F (before any ReZero gate)."""
    if cfg.placement == "pre":
        f = branch(cfg, p, norm(cfg, p, x))
        return x + f, f  # x + F(N(x))
    f = branch(cfg, p, x)
    if cfg.placement == "post":
        return norm(cfg, p, x + f), f  # N(x + F(x))
    if cfg.placement == "rezero":
        return x + p.gate * f, f  # x + a F(x); no norm
    if cfg.placement == "deepnorm":
        return norm(cfg, p, cfg.deepnorm_alpha * x + f), f  # N(alpha x + F(x))
    return f, f  # plain: F(x), no skip


def block_vjp(cfg: BlockConfig, p: BlockParams, x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, BlockParams]:
    """(dx, dparams) for cotangent g on the block's output y at input x."""
    if cfg.placement == "pre":
        dh, dp_f = branch_vjp(cfg, p, norm(cfg, p, x), g)
        dx_n, dp_n = norm_vjp(cfg, p, x, dh)
        return g + dx_n, add_grads(dp_f, dp_n)  # skip path g, branch path through N
    if cfg.placement == "rezero":
        dx_f, dp_f = branch_vjp(cfg, p, x, p.gate * g)
        return g + dx_f, dataclasses.replace(dp_f, gate=np.asarray(np.sum(g * branch(cfg, p, x))))  # dL/da = <g, F(x)>
    if cfg.placement == "plain":
        return branch_vjp(cfg, p, x, g)
    alpha = cfg.deepnorm_alpha if cfg.placement == "deepnorm" else 1.0  # post is deepnorm with alpha = 1
    z = alpha * x + branch(cfg, p, x)  # the norm's input
    dz, dp_n = norm_vjp(cfg, p, z, g)
    dx_f, dp_f = branch_vjp(cfg, p, x, dz)
    return alpha * dz + dx_f, add_grads(dp_f, dp_n)  # skip path alpha dz, branch path J_F^T dz


# --- stacks ---

def stack_forward(cfg: BlockConfig, params: Sequence[BlockParams], x: np.ndarray) -> StackTrace:
    states, branches = [x], []
    for p in params:
        x, f = block_forward(cfg, p, x)
        states.append(x)
        branches.append(f)
    return StackTrace(states=np.stack(states),  # (L+1, B, T, C)
                      branches=np.asarray(branches).reshape((len(params),) + states[0].shape))  # (L, B, T, C)


def stack_vjp(cfg: BlockConfig, params: Sequence[BlockParams], x: np.ndarray, g: np.ndarray) -> StackGrads:
    """Reverse accumulation: pull g back through block L, ..., 1 at the saved inputs x_{L-1}, ..., x_0."""
    states = stack_forward(cfg, params, x).states
    dparams = []
    for layer in reversed(range(len(params))):
        g, dp = block_vjp(cfg, params[layer], states[layer], g)
        dparams.append(dp)
    return StackGrads(dx=g, dparams=tuple(reversed(dparams)))


# --- the residual write and its Jacobian (GR-1, GR-2) ---

def residual_write(cfg: BlockConfig, p: BlockParams, x: np.ndarray) -> np.ndarray:
    """What the block writes next to its skip: pre F(N(x)); rezero a F(x); post, deepnorm, plain F(x)."""
    if cfg.placement == "pre":
        return branch(cfg, p, norm(cfg, p, x))
    if cfg.placement == "rezero":
        return p.gate * branch(cfg, p, x)
    return branch(cfg, p, x)


def residual_write_vjp(cfg: BlockConfig, p: BlockParams, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """J^T g for J the Jacobian of residual_write at x (input gradient only)."""
    if cfg.placement == "pre":
        dh, _ = branch_vjp(cfg, p, norm(cfg, p, x), g)
        return norm_vjp(cfg, p, x, dh)[0]
    if cfg.placement == "rezero":
        return branch_vjp(cfg, p, x, p.gate * g)[0]
    return branch_vjp(cfg, p, x, g)[0]


def branch_jacobian(cfg: BlockConfig, p: BlockParams, x: np.ndarray) -> np.ndarray:
    """Dense (N, N) Jacobian of residual_write at x, N = B*T*C, indices in x.ravel() order.

    Row i is J^T e_i = the VJP of the i-th basis vector: N VJPs, so for small shapes only. Its spectral norm
    (np.linalg.norm(J, 2)) is rho_l in GR-2's bound (1 - rho_l) ||g|| <= ||g + J^T g|| <= (1 + rho_l) ||g||.
    """
    basis = np.eye(x.size)
    return np.stack([residual_write_vjp(cfg, p, x, e.reshape(x.shape)).ravel() for e in basis])  # (N, N)


# --- fused add + norm: (norm(x + residual) w (+ b), x + residual) ---

def fused_add_norm(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, eps: float,
                   kind: str, residual_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The sum is rounded to the residual dtype (float64 then one rounding: double rounding is harmless since
    53 >= 2p + 2 for every narrower dtype, so this is bitwise the native add), then normalised in float64."""
    s = round_to(x + residual, residual_dtype)  # (..., C): the new residual
    return NORM[kind](s, weight, bias, eps), s


def fused_add_norm_vjp(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                       eps: float, kind: str, residual_dtype: str, g_out: np.ndarray,
                       g_residual: np.ndarray) -> FusedGrads:
    """The sum feeds both outputs, so its gradient is the norm's VJP plus g_residual; it reaches x and
    residual unchanged (the rounding is taken as the identity, as autodiff does)."""
    s = round_to(x + residual, residual_dtype)
    ds, dw, db = NORM_VJP[kind](s, weight, bias, eps, g_out)
    ds = ds + g_residual  # (..., C)
    return FusedGrads(dx=ds, dresidual=ds.copy(), dweight=dw, dbias=db)


# --- checking a VJP against central finite differences (tests/test_oracle.py; the suite's GR-4) ---

FD_REL_TOL = 1e-6  # GR-4: relative error allowed between the oracle's VJPs and finite differences
# The step, relative to max(1, max |x|). With the fourth-order stencil the truncation error, O(h^4) ~ 1e-16, is
# negligible, and the rounding error, O(u |f| / h) ~ 1e-12 |f|, stays below 1e-6 of a directional derivative
# even when that is 1e-4 of |f| (a norm gain seen through 0.02-std weights); the second-order stencil at
# h = 1e-6 does not (measured: 1e-6 relative error on a Pre-LN attention stack's norm gain).
FD_STEP = 1e-4
# Where the derivative is smaller still (a plain stack: a product of 0.02-std Jacobians next to O(0.02) biases),
# no step resolves 1e-6 of it; there the check also accepts a difference up to the stencil's own rounding,
# FD_NOISE_ULPS * u * <|g|, |f(x)|> / h. Worst seen: 2 ulps of it, over 4,347 stack checks (depth 3, every
# placement, norm and branch, inits standard, gpt2 and deepnorm, three seeds).
FD_NOISE_ULPS = 16.0
_U64 = 2.0**-53


@dataclass(frozen=True)
class DirectionalCheck:
    """<g, J v> by central differences against <J^T g, v> from the VJP, along one seeded direction v."""

    fd: float
    vjp: float
    step: float
    noise: float  # what rounding alone can make fd wrong by

    @property
    def rel_error(self) -> float:
        scale = max(abs(self.fd), abs(self.vjp))
        return 0.0 if scale == 0.0 else abs(self.fd - self.vjp) / scale

    @property
    def ok(self) -> bool:
        return abs(self.fd - self.vjp) <= FD_REL_TOL * max(abs(self.fd), abs(self.vjp)) + self.noise

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"> {FD_REL_TOL:g} and beyond the rounding noise {self.noise:.1e}"
        return (f"finite differences {self.fd:.12g} vs VJP {self.vjp:.12g}: rel error {self.rel_error:.2e} "
                f"{verdict} (step {self.step:.1e})")


def fd_directional_check(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, g: np.ndarray, vjp_x: np.ndarray,
                         seed: int, step: float = FD_STEP) -> DirectionalCheck:
    """Check vjp_x, the claimed gradient of <g, f(x)> w.r.t. x, along a seeded standard normal direction v.

    f maps an array shaped like x (a 0-d array for a scalar) to an array shaped like g. The directional
    derivative d/dt <g, f(x + t v)> at t = 0 comes from the fourth-order central difference
    <g, 8 (f(x + h v) - f(x - h v)) - (f(x + 2h v) - f(x - 2h v))> / 12h (differences taken elementwise first,
    so an f that ignores x gives exactly 0). The VJP side applies the same stencil to the perturbations actually
    made (x + c h v, rounded), so the rounding of x + c h v is not counted as an error.
    """
    x = np.asarray(x, dtype=np.float64)
    v = np.random.default_rng(seed).standard_normal(x.shape)
    h = step * max(1.0, float(np.max(np.abs(x), initial=0.0)))
    x1p, x1m, x2p, x2m = x + h * v, x - h * v, x + 2 * h * v, x - 2 * h * v
    fd = np.sum(g * (8.0 * (f(x1p) - f(x1m)) - (f(x2p) - f(x2m)))) / (12.0 * h)
    vjp = np.sum(vjp_x * (8.0 * (x1p - x1m) - (x2p - x2m))) / (12.0 * h)
    noise = FD_NOISE_ULPS * _U64 * np.sum(np.abs(g * f(x))) / h
    return DirectionalCheck(fd=float(fd), vjp=float(vjp), step=h, noise=float(noise))


# --- the backend ---

class NumpyReference(Backend):
    """The float64 oracle behind the adapter API: every placement, norm, branch and dtype, and fused add+norm."""

    name = "numpy"
    devices = ("cpu",)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(dtypes=frozenset(DTYPES), fused_kinds=frozenset(FUSED_KINDS))

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}

    def stack_forward(self, cfg: BlockConfig, params: Sequence[BlockParams], x: np.ndarray, dtype: str) -> StackTrace:
        self._check_dtype(dtype)
        return stack_forward(cfg, params, _checked_stream(cfg, params, x))

    def stack_vjp(self, cfg: BlockConfig, params: Sequence[BlockParams], x: np.ndarray, g: np.ndarray,
                  dtype: str) -> StackGrads:
        self._check_dtype(dtype)
        x = _checked_stream(cfg, params, x)
        _check_same_shape("g", g, "x", x)
        return stack_vjp(cfg, params, x, np.asarray(g, dtype=np.float64))

    def fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        self._check_fused(x, residual, weight, bias, kind, dtype)
        return fused_add_norm(x, residual, weight, bias, eps, kind, residual_dtype(dtype, residual_in_fp32))

    def fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                           residual_in_fp32=False) -> FusedGrads:
        self._check_fused(x, residual, weight, bias, kind, dtype)
        _check_same_shape("g_out", g_out, "x", x)
        _check_same_shape("g_residual", g_residual, "x", x)
        return fused_add_norm_vjp(x, residual, weight, bias, eps, kind, residual_dtype(dtype, residual_in_fp32),
                                  g_out, g_residual)

    def _check_dtype(self, dtype: str) -> None:
        if dtype not in self.capabilities.dtypes:
            raise dtype_error(self, dtype)

    def _check_fused(self, x, residual, weight, bias, kind, dtype) -> None:
        self._check_dtype(dtype)
        if kind not in FUSED_KINDS:
            raise ValueError(f"fused add+norm kind {kind!r} is not one of {FUSED_KINDS}")
        _check_same_shape("residual", residual, "x", x)
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and np.shape(t) != np.shape(x)[-1:]:
                raise ValueError(f"{name} has shape {np.shape(t)} but x has shape {np.shape(x)}: "
                                 f"it must be ({np.shape(x)[-1]},), one value per feature")


def _check_same_shape(name: str, a: np.ndarray, other: str, b: np.ndarray) -> None:
    """Same shape exactly: a (1, C) residual that NumPy would broadcast silently is an error (BI-1)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{name} has shape {np.shape(a)} but {other} has shape {np.shape(b)}; they must match")


def _checked_stream(cfg: BlockConfig, params: Sequence[BlockParams], x: np.ndarray) -> np.ndarray:
    """x as float64 (B, T, d_model), every block's output width d_model, or a ValueError naming both shapes."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != cfg.d_model:
        raise ValueError(f"x has shape {x.shape}; expected (B, T, {cfg.d_model}) for d_model={cfg.d_model}")
    for layer, p in enumerate(params):
        if p.w_out.shape[-1] != cfg.d_model or p.norm_weight.shape != (cfg.d_model,):
            raise ValueError(f"block {layer}: branch output width w_out.shape={p.w_out.shape} and "
                             f"norm_weight.shape={p.norm_weight.shape} must both end in d_model={cfg.d_model}")
    return x

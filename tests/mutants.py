"""Deliberately broken backends: each must be caught by the property family named in EXPECTED.

Every mutant is the float64 oracle with one thing wrong, plugged in like any third-party backend
(`--backend tests.mutants:SkipDropped`). tests/test_mutants.py runs the suite on them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from resconf.backends import numpy_ops as ops
from resconf.backends import numpy_ref as ref
from resconf.backends.dtypes import numpy_dtype
from resconf.backends.base import StackGrads, StackTrace
from resconf.backends.numpy_ref import NumpyReference
from resconf.backends.params import draw_params

TINY = 2.0**-10


class BlockMutant(NumpyReference):
    """The oracle's stack loop over overridable per-block forward and VJP."""

    name = "mutant"

    def forward_block(self, cfg, p, x):
        return ref.block_forward(cfg, p, x)

    def vjp_block(self, cfg, p, x, g):
        return ref.block_vjp(cfg, p, x, g)

    def stack_forward(self, cfg, params, x, dtype):
        states, branches = [np.asarray(x, dtype=np.float64)], []
        for p in params:
            y, f = self.forward_block(cfg, p, states[-1])
            states.append(y)
            branches.append(f)
        return StackTrace(states=np.stack(states), branches=np.stack(branches))

    def stack_vjp(self, cfg, params, x, g, dtype):
        states = self.stack_forward(cfg, params, x, dtype).states
        dparams = []
        for layer in reversed(range(len(params))):
            g, dp = self.vjp_block(cfg, params[layer], states[layer], g)
            dparams.append(dp)
        return StackGrads(dx=g, dparams=tuple(reversed(dparams)))


class SkipDropped(BlockMutant):
    """pre computes F(N(x)): the skip is gone."""

    def forward_block(self, cfg, p, x):
        y, f = ref.block_forward(cfg, p, x)
        return (f, f) if cfg.placement == "pre" else (y, f)

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        return (dx - g, dp) if cfg.placement == "pre" else (dx, dp)


class SkipDetached(BlockMutant):
    """Forward right, but the skip is detached from autograd: the VJP lacks the identity path."""

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        return (dx - g, dp) if cfg.placement in ("pre", "rezero") else (dx, dp)


class ResidualAddedTwice(BlockMutant):
    """pre computes 2x + F(N(x))."""

    def forward_block(self, cfg, p, x):
        y, f = ref.block_forward(cfg, p, x)
        return (y + x, f) if cfg.placement == "pre" else (y, f)

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        return (dx + g, dp) if cfg.placement == "pre" else (dx, dp)


class ResidualScaled(BlockMutant):
    """pre computes (1 + 2^-10) x + F(N(x))."""

    def forward_block(self, cfg, p, x):
        y, f = ref.block_forward(cfg, p, x)
        return (y + TINY * x, f) if cfg.placement == "pre" else (y, f)

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        return (dx + TINY * g, dp) if cfg.placement == "pre" else (dx, dp)


class PostAsPre(BlockMutant):
    """post mislabelled: it computes the pre block."""

    def _cfg(self, cfg):
        return dataclasses.replace(cfg, placement="pre") if cfg.placement == "post" else cfg

    def forward_block(self, cfg, p, x):
        return ref.block_forward(self._cfg(cfg), p, x)

    def vjp_block(self, cfg, p, x, g):
        return ref.block_vjp(self._cfg(cfg), p, x, g)


class PlainWithSkip(BlockMutant):
    """plain (the control) quietly keeps a skip: x + F(x)."""

    def forward_block(self, cfg, p, x):
        y, f = ref.block_forward(cfg, p, x)
        return (x + f, f) if cfg.placement == "plain" else (y, f)

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        return (dx + g, dp) if cfg.placement == "plain" else (dx, dp)


class WrongEps(BlockMutant):
    """Every norm uses eps = 1e-2 whatever the configuration says."""

    def forward_block(self, cfg, p, x):
        return ref.block_forward(dataclasses.replace(cfg, eps=1e-2), p, x)

    def vjp_block(self, cfg, p, x, g):
        return ref.block_vjp(dataclasses.replace(cfg, eps=1e-2), p, x, g)


class GateIgnored(BlockMutant):
    """rezero computes x + F(x): the learnable a is never applied."""

    def forward_block(self, cfg, p, x):
        if cfg.placement == "rezero":
            return ref.block_forward(cfg, dataclasses.replace(p, gate=np.array(1.0)), x)
        return ref.block_forward(cfg, p, x)


class GradientScaled(BlockMutant):
    """Every input VJP comes out (1 + 2^-10) too large."""

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        return dx * (1 + TINY), dp


class Float16Variance(BlockMutant):
    """post's layernorm accumulates its variance in float16."""

    def forward_block(self, cfg, p, x):
        if cfg.placement != "post" or cfg.norm != "layernorm":
            return ref.block_forward(cfg, p, x)
        f = ref.branch(cfg, p, x)
        z = x + f
        mean = z.mean(axis=-1, keepdims=True)
        var = np.mean(((z - mean) ** 2).astype(np.float16), axis=-1, keepdims=True, dtype=np.float16)
        return (z - mean) / np.sqrt(var.astype(np.float64) + cfg.eps) * p.norm_weight + p.norm_bias, f


class RezeroInitTiny(BlockMutant):
    """Its own initializer sets ReZero's a to 1e-4 instead of 0."""

    def init_params(self, cfg, seed):
        params = draw_params(cfg, seed)
        if cfg.placement == "rezero" and cfg.init == "rezero":
            return tuple(dataclasses.replace(p, gate=np.array(1e-4)) for p in params)
        return params


class Gpt2ScaleLinear(BlockMutant):
    """Its own initializer scales GPT-2 output projections by 1/(2L) instead of 1/sqrt(2L)."""

    def init_params(self, cfg, seed):
        params = draw_params(cfg, seed)
        if cfg.init != "gpt2":
            return params
        fix = np.sqrt(2.0 * cfg.depth) / (2.0 * cfg.depth)  # from 1/sqrt(2L) to 1/(2L)
        return tuple(dataclasses.replace(p, w_out=p.w_out * fix) for p in params)


class WrongGelu(BlockMutant):
    """The mlp uses the other GELU: tanh when exact is asked for and the reverse."""

    def _cfg(self, cfg):
        return dataclasses.replace(cfg, gelu="exact" if cfg.gelu == "tanh" else "tanh")

    def forward_block(self, cfg, p, x):
        return ref.block_forward(self._cfg(cfg), p, x)

    def vjp_block(self, cfg, p, x, g):
        return ref.block_vjp(self._cfg(cfg), p, x, g)


class NonDeterministic(BlockMutant):
    """Each call perturbs its output by about one float64 ulp, differently every time (a racy sum)."""

    def forward_block(self, cfg, p, x):
        y, f = ref.block_forward(cfg, p, x)
        return y * (1.0 + np.random.default_rng().choice([-1.0, 0.0, 1.0], size=y.shape) * 2.0**-52), f


class LayoutSensitive(BlockMutant):
    """Reads the input in memory order, as if it were contiguous: views come out scrambled."""

    def stack_forward(self, cfg, params, x, dtype):
        x = np.asarray(x)
        return super().stack_forward(cfg, params, x.ravel(order="K").reshape(x.shape), dtype)


class NanToZero(BlockMutant):
    """Quietly replaces NaN and Inf in every block's output by finite numbers."""

    def forward_block(self, cfg, p, x):
        y, f = ref.block_forward(cfg, p, x)
        return np.nan_to_num(y), f


class EmptyCrashes(BlockMutant):
    """Refuses empty batches and sequences."""

    def stack_forward(self, cfg, params, x, dtype):
        if np.size(x) == 0:
            raise ZeroDivisionError("mean of an empty token")
        return super().stack_forward(cfg, params, x, dtype)


class NormStatisticsInFloat16(BlockMutant):
    """Every norm computes its statistics in float16: they overflow once |x| passes ~256."""

    def forward_block(self, cfg, p, x):
        def norm16(z):
            z16 = z.astype(np.float16)
            if cfg.norm == "layernorm":
                mean = z16.mean(axis=-1, keepdims=True)
                var = ((z16 - mean) ** 2).mean(axis=-1, keepdims=True)
                return (z - mean) / np.sqrt(var.astype(np.float64) + cfg.eps) * p.norm_weight + p.norm_bias
            ms = (z16**2).mean(axis=-1, keepdims=True)
            return z / np.sqrt(ms.astype(np.float64) + cfg.eps) * p.norm_weight

        if cfg.placement == "pre":
            f = ref.branch(cfg, p, norm16(x))
            return x + f, f
        if cfg.placement == "post":
            f = ref.branch(cfg, p, x)
            return norm16(x + f), f
        return ref.block_forward(cfg, p, x)


class NanReplacedAfterNorm(BlockMutant):
    """pre replaces NaN and Inf in the norm's output by finite numbers before the branch sees it."""

    def forward_block(self, cfg, p, x):
        if cfg.placement != "pre":
            return ref.block_forward(cfg, p, x)
        f = ref.branch(cfg, p, np.nan_to_num(ref.norm(cfg, p, x)))
        return x + f, f


def _output_projection_terms(cfg, p, x, g):
    """(a, g) as (tokens, H) and (tokens, C) for a pre block: the input of the branch's output projection
    and the cotangent of its output, so that d w_out = sum over tokens of a_t^T g_t."""
    h = ref.norm(cfg, p, x)
    a = h if cfg.branch == "linear" else ref._inner(cfg, ops.linear(h, p.w_in, p.b_in))
    return a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])


class RacyWeightGradient(BlockMutant):
    """pre's output-projection weight gradient sums its tokens in a different order on every call, as
    a reduction whose threads race for the accumulator does."""

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        if cfg.placement != "pre":
            return dx, dp
        a, gf = _output_projection_terms(cfg, p, x, g)
        order = np.random.default_rng().permutation(len(a))
        return dx, dataclasses.replace(dp, w_out=np.add.reduce(a[order, :, None] * gf[order, None, :], axis=0))


class Bfloat16WeightGradient(BlockMutant):
    """In bfloat16, pre's output-projection weight gradient is accumulated in bfloat16, token after token
    (frameworks accumulate in float32 and round once)."""

    def stack_vjp(self, cfg, params, x, g, dtype):
        self.dtype = dtype
        return super().stack_vjp(cfg, params, x, g, dtype)

    def vjp_block(self, cfg, p, x, g):
        dx, dp = ref.block_vjp(cfg, p, x, g)
        if cfg.placement != "pre" or self.dtype != "bfloat16":
            return dx, dp
        a, gf = _output_projection_terms(cfg, p, x, g)
        bf16 = numpy_dtype("bfloat16")
        total = np.zeros((a.shape[1], gf.shape[1]), dtype=bf16)
        for a_t, g_t in zip(a, gf):
            total = total + np.outer(a_t, g_t).astype(bf16)  # rounded to bfloat16 at every step
        return dx, dataclasses.replace(dp, w_out=total.astype(np.float64))


def _blockwise_attention_without_rescale(qkv, n_heads, block=64):
    """Causal attention as a flash kernel computes it, over blocks of `block` keys with a running max,
    except that the earlier blocks' sums are never rescaled when the max grows."""
    q, k, v = (ops.split_heads(t, n_heads) for t in np.split(qkv, 3, axis=-1))  # (B, nh, T, hd)
    T = q.shape[-2]
    m = np.full(q.shape[:-1] + (1,), -np.inf)
    total, weight = np.zeros_like(q), np.zeros(m.shape)
    for k0 in range(0, T, block):
        s = q @ k[..., k0:k0 + block, :].swapaxes(-1, -2) / np.sqrt(q.shape[-1])  # (B, nh, T, block)
        future = np.arange(k0, k0 + s.shape[-1])[None, :] > np.arange(T)[:, None]
        s = np.where(future, -np.inf, s)
        m = np.maximum(m, s.max(axis=-1, keepdims=True))
        e = np.exp(s - m)
        total, weight = total + e @ v[..., k0:k0 + block, :], weight + e.sum(axis=-1, keepdims=True)  # no rescale
    return ops.merge_heads(total / weight)


class BlockwiseSoftmaxNoRescale(BlockMutant):
    """pre attention's softmax runs blockwise over 64 keys and forgets to rescale earlier blocks: exact
    for T <= 64, wrong beyond."""

    def forward_block(self, cfg, p, x):
        if cfg.placement != "pre" or cfg.branch != "attention":
            return ref.block_forward(cfg, p, x)
        qkv = ops.linear(ref.norm(cfg, p, x), p.w_in, p.b_in)
        f = ops.linear(_blockwise_attention_without_rescale(qkv, cfg.n_heads), p.w_out, p.b_out)
        return x + f, f


class FusedStaleResidual(NumpyReference):
    """Fused add+norm returns the residual from before the add."""

    def fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        out, _ = super().fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
        return out, residual


class FusedSilentBroadcast(NumpyReference):
    """Fused add+norm lets NumPy broadcast a (1, C) residual or a wrong-length weight."""

    def fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        s = x + residual
        return ref.NORM[kind](s, weight[: s.shape[-1]], bias, eps), s


class FusedNanToZero(NumpyReference):
    """Fused add+norm replaces NaN and Inf in its inputs by finite numbers before the add."""

    def fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        return super().fused_add_norm(np.nan_to_num(x), np.nan_to_num(residual), weight, bias, eps, kind, dtype,
                                      residual_in_fp32)


class FusedSilentDowncast(NumpyReference):
    """residual_in_fp32 is ignored: the new residual is rounded to the narrow dtype."""

    def fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        return super().fused_add_norm(x, residual, weight, bias, eps, kind, dtype, False)


# mutant -> property IDs that must flag it (at least these)
EXPECTED = {
    SkipDropped: {"ID-1", "ID-2", "GR-2", "VG-1"},
    SkipDetached: {"ID-3", "GR-1", "GR-2", "GR-4"},
    ResidualAddedTwice: {"ID-1", "ID-2", "VG-1", "VG-2"},
    ResidualScaled: {"ID-1", "ID-2", "VG-1", "VG-2"},
    PostAsPre: {"ID-4", "GR-1", "VG-4"},
    PlainWithSkip: {"ID-4", "GR-2", "GR-3"},
    WrongEps: {"ID-4", "VG-4"},
    GateIgnored: {"ID-1", "ID-3"},
    GradientScaled: {"GR-1", "GR-4"},
    Float16Variance: {"VG-4"},
    RezeroInitTiny: {"ID-1"},
    Gpt2ScaleLinear: {"VG-3"},
    WrongGelu: {"XB-1", "XB-2"},
    NonDeterministic: {"XB-4"},
    LayoutSensitive: {"XB-5"},
    NanToZero: {"BI-3"},
    EmptyCrashes: {"BI-4"},
    NormStatisticsInFloat16: {"BI-5"},
    NanReplacedAfterNorm: {"BI-3"},
    RacyWeightGradient: {"XB-4"},
    Bfloat16WeightGradient: {"XB-2"},
    BlockwiseSoftmaxNoRescale: {"XB-1"},
    FusedStaleResidual: {"XB-3"},
    FusedSilentBroadcast: {"BI-1"},
    FusedSilentDowncast: {"BI-2"},
    FusedNanToZero: {"BI-3"},
}

# mutants that show only on the long-sequence cases or in another dtype than float64: the cases (a pytest
# -k expression) they run on
SELECTION = {Bfloat16WeightGradient: "long_sequence_vjp and bfloat16",
             BlockwiseSoftmaxNoRescale: "long_sequence_forward and float64"}

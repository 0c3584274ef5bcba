"""Deliberately broken backends: each must be caught by the properties whose catalogue row names it
(conformance/catalogue.py; EXPECTED is read from there).

Every mutant is the float64 oracle with one thing wrong, plugged in like any third-party backend
(`--backend tests.mutants:SkipDropped`). tests/test_mutants.py runs the suite on them.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np

from resconf.backends.oracle import numpy_ops as ops
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.dtypes import accumulation_dtype, numpy_dtype, round_to
from resconf.backends.base import StackGrads, StackTrace
from resconf.backends.oracle.numpy_ref import NumpyReference
from resconf.backends.params import LayerParams, draw_params, role_of
from resconf.conformance import catalogue

TINY = 2.0**-10


def _affine(xhat, s):
    """A norm's gain and bias (when it has one) on its standardised input."""
    return xhat * s.norm_weight if s.norm_bias is None else xhat * s.norm_weight + s.norm_bias


class BlockMutant(NumpyReference):
    """The oracle's stack loop over an overridable forward and VJP of one update (one sublayer, or one
    parallel layer). `kinds` are the update's sublayers; a VJP returns gradients by full tensor name."""

    name = "mutant"

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(cfg, p, kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        return ref.update_vjp(cfg, p, kinds, x, g)

    def _stack_forward(self, cfg, params, x, dtype):
        states, writes = [np.asarray(x, dtype=np.float64)], []
        for _, p, kinds in ref.layer_updates(cfg, params):
            y, f = self.forward_block(cfg, p, kinds, states[-1])
            states.append(y)
            writes.append(f)
        final = ref.norm(cfg, params[-1].sub("final"), states[-1]) if cfg.final_norm else None
        return StackTrace(states=np.stack(states), writes=np.stack(writes), final=final)

    def _stack_vjp(self, cfg, params, x, g, dtype):
        states = self._stack_forward(cfg, params, x, dtype).states
        dparams = [ref.zero_grads(p) for p in params]
        if cfg.final_norm:
            g, part = ref.norm_vjp(cfg, params[-1].sub("final"), states[-1], g)
            dparams[-1] = ref.add_grads(dparams[-1], {f"final.{n}": t for n, t in part.items() if t is not None})
        for u, (layer, p, kinds) in reversed(list(enumerate(ref.layer_updates(cfg, params)))):
            g, grads = self.vjp_block(cfg, p, kinds, states[u], g)
            dparams[layer] = ref.add_grads(dparams[layer], grads)
        return StackGrads(dx=g, dparams=tuple(dparams))


class SkipDropped(BlockMutant):
    """pre computes F(N(x)): the skip is gone."""

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        return (f, f) if cfg.placement == "pre" else (y, f)

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return (dx - g, dp) if cfg.placement == "pre" else (dx, dp)


class SkipDetached(BlockMutant):
    """Forward right, but the skip is detached from autograd: the VJP lacks the identity path."""

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return (dx - g, dp) if cfg.placement in ("pre", "rezero") else (dx, dp)


class ResidualAddedTwice(BlockMutant):
    """pre computes 2x + F(N(x))."""

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        return (y + x, f) if cfg.placement == "pre" else (y, f)

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return (dx + g, dp) if cfg.placement == "pre" else (dx, dp)


class ResidualScaled(BlockMutant):
    """pre computes (1 + 2^-10) x + F(N(x))."""

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        return (y + TINY * x, f) if cfg.placement == "pre" else (y, f)

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return (dx + TINY * g, dp) if cfg.placement == "pre" else (dx, dp)


class PostAsPre(BlockMutant):
    """post mislabelled: it computes the pre block."""

    def _cfg(self, cfg):
        return dataclasses.replace(cfg, placement="pre") if cfg.placement == "post" else cfg

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(self._cfg(cfg), p, kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        return ref.update_vjp(self._cfg(cfg), p, kinds, x, g)


class PlainWithSkip(BlockMutant):
    """plain (the control) quietly keeps a skip: x + F(x)."""

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        return (x + f, f) if cfg.placement == "plain" else (y, f)

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return (dx + g, dp) if cfg.placement == "plain" else (dx, dp)


class WrongEps(BlockMutant):
    """Every norm uses eps = 1e-2 whatever the configuration says."""

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(dataclasses.replace(cfg, eps=1e-2), p, kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        return ref.update_vjp(dataclasses.replace(cfg, eps=1e-2), p, kinds, x, g)


class GateIgnored(BlockMutant):
    """rezero computes x + F(x): the learnable a is never applied."""

    def forward_block(self, cfg, p, kinds, x):
        if cfg.placement == "rezero":
            return ref.update_forward(cfg, p.replace({f"{kinds[0]}.gate": np.array(1.0)}), kinds, x)
        return ref.update_forward(cfg, p, kinds, x)


class GradientScaled(BlockMutant):
    """Every input VJP comes out (1 + 2^-10) too large."""

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return dx * (1 + TINY), dp


class AttentionGradientScaled(BlockMutant):
    """An attention sublayer's input VJP comes out (1 + 2^-10) too large: a gradient through the layers people
    ship off by 2.4 % over 12 layers, which GR-3's band on the presets sees (the linear sweep has no attention)."""

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        return (dx * (1 + TINY), dp) if "attention" in kinds else (dx, dp)


class Float16Variance(BlockMutant):
    """post's layernorm accumulates its variance in float16."""

    def forward_block(self, cfg, p, kinds, x):
        if cfg.placement != "post" or cfg.norm != "layernorm":
            return ref.update_forward(cfg, p, kinds, x)
        s = p.sub(kinds[0])
        f = ref.write(cfg, kinds[0], s, x)
        z = x + f
        mean = z.mean(axis=-1, keepdims=True)
        var = np.mean(((z - mean) ** 2).astype(np.float16), axis=-1, keepdims=True, dtype=np.float16)
        return _affine((z - mean) / np.sqrt(var.astype(np.float64) + cfg.eps), s), f


class FastVariance(BlockMutant):
    """Every layernorm takes Var = E[x^2] - E[x]^2 (one pass, clamped at 0), in float32 for float32 and the
    narrow dtypes, float64 for float64: flax.nnx.LayerNorm's default use_fast_variance=True. It cancels
    when a token's mean dwarfs its spread (test_forward_offset_mean)."""

    def _stack_forward(self, cfg, params, x, dtype):
        acc = np.float64 if dtype == "float64" else np.float32

        def layernorm(x, w, b, eps):
            h = np.asarray(x).astype(acc)  # (B, T, C)
            mean = h.mean(axis=-1, keepdims=True, dtype=acc)
            var = np.maximum((h * h).mean(axis=-1, keepdims=True, dtype=acc) - mean * mean, 0)
            xhat = ((h - mean) / np.sqrt(var + acc(eps))).astype(np.float64)
            return xhat * w if b is None else xhat * w + b

        original = ref.NORM["layernorm"]
        ref.NORM["layernorm"] = layernorm
        try:
            return super()._stack_forward(cfg, params, x, dtype)
        finally:
            ref.NORM["layernorm"] = original


class RezeroInitTiny(BlockMutant):
    """Its own initializer sets ReZero's a to 1e-4 instead of 0."""

    def init_params(self, cfg, seed):
        params = draw_params(cfg, seed)
        if cfg.placement == "rezero" and cfg.init == "rezero":
            return tuple(p.replace({n: np.array(1e-4) for n in p.tensors if n.endswith(".gate")}) for p in params)
        return params


class Gpt2ScaleLinear(BlockMutant):
    """Its own initializer scales GPT-2 output projections by 1/n instead of 1/sqrt(n), n residual writes."""

    def init_params(self, cfg, seed):
        return _scaled_outputs(cfg, seed, 1.0 / np.sqrt(cfg.n_writes))  # from 1/sqrt(n) to 1/n


class Gpt2DepthCountedTwice(BlockMutant):
    """Its own GPT-2 initializer counts two writes per layer whatever the layer has (0.02 / sqrt(2 L)): right
    for a two-sublayer layer, too small for one-sublayer layers (the old resconf's depth counting)."""

    def init_params(self, cfg, seed):
        return _scaled_outputs(cfg, seed, np.sqrt(cfg.n_writes / (2.0 * cfg.depth)))


class Gpt2HalfWriteVariance(BlockMutant):
    """Its own GPT-2 initializer draws every output projection with half the scheme's variance (0.02 /
    sqrt(2 n), n residual writes), on every layer, the presets' two-sublayer layers too."""

    def init_params(self, cfg, seed):
        return _scaled_outputs(cfg, seed, np.sqrt(0.5))


class WritesNothing(BlockMutant):
    """Every sublayer's write is dropped from the forward: x_l = x_{l-1}, whatever the weights (a stack of
    identities, which the stream's growth alone cannot tell from a small write)."""

    def forward_block(self, cfg, p, kinds, x):
        y, w = ref.update_forward(cfg, p, kinds, x)
        return (x, np.zeros_like(w)) if cfg.placement == "pre" else (y, w)


def _scaled_outputs(cfg, seed, factor):
    params = draw_params(cfg, seed)
    if cfg.init != "gpt2":
        return params
    return tuple(p.replace({n: t * factor for n, t in p.items() if role_of(n) == "out"}) for p in params)


class WrongGelu(BlockMutant):
    """The mlp uses the other GELU: tanh when exact is asked for and the reverse."""

    def _cfg(self, cfg):
        return dataclasses.replace(cfg, gelu="exact" if cfg.gelu == "tanh" else "tanh")

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(self._cfg(cfg), p, kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        return ref.update_vjp(self._cfg(cfg), p, kinds, x, g)


class NonDeterministic(BlockMutant):
    """Each call perturbs its output by about one float64 ulp, differently every time (a racy sum)."""

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        return y * (1.0 + np.random.default_rng().choice([-1.0, 0.0, 1.0], size=y.shape) * 2.0**-52), f


class LayoutSensitive(BlockMutant):
    """Reads the input in memory order, as if it were contiguous: views come out scrambled."""

    def _stack_forward(self, cfg, params, x, dtype):
        x = np.asarray(x)
        return super()._stack_forward(cfg, params, x.ravel(order="K").reshape(x.shape), dtype)


class NanToZero(BlockMutant):
    """Quietly replaces NaN and Inf in every block's output by finite numbers."""

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        return np.nan_to_num(y), f


class EmptyCrashes(BlockMutant):
    """Refuses empty batches and sequences."""

    def _stack_forward(self, cfg, params, x, dtype):
        if np.size(x) == 0:
            raise ZeroDivisionError("mean of an empty token")
        return super()._stack_forward(cfg, params, x, dtype)


class NormStatisticsInFloat16(BlockMutant):
    """Every norm computes its statistics in float16: they overflow once |x| passes ~256."""

    def forward_block(self, cfg, p, kinds, x):
        s = p.sub(cfg.norm_owner(kinds[0]))

        def norm16(z):
            z16 = z.astype(np.float16)
            if cfg.norm == "layernorm":
                mean = z16.mean(axis=-1, keepdims=True)
                var = ((z16 - mean) ** 2).mean(axis=-1, keepdims=True)
                return _affine((z - mean) / np.sqrt(var.astype(np.float64) + cfg.eps), s)
            ms = (z16**2).mean(axis=-1, keepdims=True)
            return _affine(z16 / np.sqrt(ms.astype(np.float64) + cfg.eps), s)  # inf / inf once z16 overflows

        if cfg.placement == "pre":
            f = sum(ref.write(cfg, k, p.sub(k), norm16(x)) for k in kinds)
            return x + f, f
        if cfg.placement == "post":
            f = ref.write(cfg, kinds[0], p.sub(kinds[0]), x)
            return norm16(x + f), f
        return ref.update_forward(cfg, p, kinds, x)


class NanReplacedAfterNorm(BlockMutant):
    """pre replaces NaN and Inf in the norm's output by finite numbers before the branch sees it."""

    def forward_block(self, cfg, p, kinds, x):
        if cfg.placement != "pre":
            return ref.update_forward(cfg, p, kinds, x)
        f = sum(ref.write(cfg, k, p.sub(k), np.nan_to_num(ref.norm(cfg, p.sub(cfg.norm_owner(k)), x))) for k in kinds)
        return x + f, f


OUTPUT_WEIGHT = {"linear": "w_out", "mlp": "w_down", "attention": "wo"}


def _projection_input(cfg, kind, s, h):
    """What the sublayer's output projection multiplies: h, the activation, or the attention heads merged."""
    if kind == "linear":
        return h
    if kind == "mlp":
        act, _ = ref.activation(cfg)
        u = ops.linear(h, s.w_up, s.b_up)
        return act(ops.linear(h, s.w_gate, s.b_gate)) * u if cfg.gated else act(u)
    *_, v, _, _, q, k = ref._attention_inputs(cfg, s, h)
    groups = cfg.n_heads // cfg.kv_heads
    return ops.merge_heads(ops.attention(q, ops.repeat_kv(k, groups), ops.repeat_kv(v, groups), cfg.causal))


def _output_projection_terms(cfg, p, kind, x, g):
    """(name, a, g) with a and g as (tokens, H) and (tokens, C) for a pre sublayer: its output projection's
    full name, input and output cotangent, so that its weight gradient is the sum over tokens of a_t^T g_t."""
    s = p.sub(kind)
    a = _projection_input(cfg, kind, s, ref.norm(cfg, p.sub(cfg.norm_owner(kind)), x))
    g = ref._write_scale(cfg, s) * g
    return f"{kind}.{OUTPUT_WEIGHT[kind]}", a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])


class RacyWeightGradient(BlockMutant):
    """pre's output-projection weight gradient sums its tokens in a different order on every call, as
    a reduction whose threads race for the accumulator does."""

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        if cfg.placement != "pre":
            return dx, dp
        for kind in kinds:
            name, a, gf = _output_projection_terms(cfg, p, kind, x, g)
            order = np.random.default_rng().permutation(len(a))
            dp[name] = np.add.reduce(a[order, :, None] * gf[order, None, :], axis=0)
        return dx, dp


class Bfloat16WeightGradient(BlockMutant):
    """In bfloat16, pre's output-projection weight gradient is accumulated in bfloat16, token after token
    (frameworks accumulate in float32 and round once)."""

    def _stack_vjp(self, cfg, params, x, g, dtype):
        self.dtype = dtype
        return super()._stack_vjp(cfg, params, x, g, dtype)

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        if cfg.placement != "pre" or self.dtype != "bfloat16":
            return dx, dp
        bf16 = numpy_dtype("bfloat16")
        for kind in kinds:
            name, a, gf = _output_projection_terms(cfg, p, kind, x, g)
            total = np.zeros((a.shape[1], gf.shape[1]), dtype=bf16)
            for a_t, g_t in zip(a, gf):
                total = total + np.outer(a_t, g_t).astype(bf16)  # rounded to bfloat16 at every step
            dp[name] = total.astype(np.float64)
        return dx, dp


def _blockwise_attention_without_rescale(q, k, v, block=64):
    """Causal attention as a flash kernel computes it, over blocks of `block` keys with a running max,
    except that the earlier blocks' sums are never rescaled when the max grows."""
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
    return total / weight


@contextmanager
def _swapped(module, name, replacement):
    """module.name is `replacement` for the duration: the oracle with one operation changed."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield original
    finally:
        setattr(module, name, original)


class SwapMutant(BlockMutant):
    """The oracle with `module.name` replaced by `self.replace(original)` inside every call."""

    module, attribute = ops, ""

    def replace(self, original):
        raise NotImplementedError

    def _stack_forward(self, cfg, params, x, dtype):
        with _swapped(self.module, self.attribute, self.replace(getattr(self.module, self.attribute))):
            return super()._stack_forward(cfg, params, x, dtype)

    def _stack_vjp(self, cfg, params, x, g, dtype):
        with _swapped(self.module, self.attribute, self.replace(getattr(self.module, self.attribute))):
            return super()._stack_vjp(cfg, params, x, g, dtype)


class BlockwiseSoftmaxNoRescale(SwapMutant):
    """Causal attention's softmax runs blockwise over 64 keys and forgets to rescale earlier blocks: exact
    for T <= 64, wrong beyond."""

    attribute = "attention"

    def replace(self, original):
        return lambda q, k, v, causal: _blockwise_attention_without_rescale(q, k, v) if causal else original(q, k, v, causal)


class RopeOnValues(SwapMutant):
    """RoPE rotates the values too, not only queries and keys."""

    module, attribute = ref, "_attention_inputs"

    def replace(self, original):
        def inputs(cfg, s, h):
            q0, k0, v, q1, k1, q2, k2 = original(cfg, s, h)
            return q0, k0, ops.rope(v, cfg.rope_base) if cfg.rope else v, q1, k1, q2, k2
        return inputs


class QkNormAfterRope(SwapMutant):
    """QK-norm is applied after RoPE instead of before (the rotation mixes the pairs the gain scales)."""

    module, attribute = ref, "_attention_inputs"

    def replace(self, original):
        def inputs(cfg, s, h):
            q0, k0, v, q1, k1, q2, k2 = original(cfg, s, h)
            if not (cfg.qk_norm and cfg.qk_norm_scope == "head" and cfg.rope):
                return q0, k0, v, q1, k1, q2, k2
            q2 = ops.rmsnorm(ops.rope(q0, cfg.rope_base), s.q_norm_weight, None, cfg.eps)
            k2 = ops.rmsnorm(ops.rope(k0, cfg.rope_base), s.k_norm_weight, None, cfg.eps)
            return q0, k0, v, q1, k1, q2, k2
        return inputs


class GqaWrongGroup(SwapMutant):
    """Grouped-query attention maps query head h to kv head h % n_kv (tiled) instead of h // groups."""

    attribute = "repeat_kv"

    def replace(self, original):
        return lambda a, groups: np.tile(a, (1, groups, 1, 1))


class SwigluGateUpSwapped(BlockMutant):
    """A gated MLP applies its activation to the up projection and multiplies by the gate: silu(x W_up) * x W_gate."""

    SWAP = {"mlp.w_gate": "mlp.w_up", "mlp.w_up": "mlp.w_gate", "mlp.b_gate": "mlp.b_up", "mlp.b_up": "mlp.b_gate"}

    def _swap(self, cfg, tensors):
        if not cfg.gated:
            return tensors
        return {self.SWAP.get(name, name): t for name, t in tensors.items()}

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(cfg, LayerParams(self._swap(cfg, p.tensors)), kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, grads = ref.update_vjp(cfg, LayerParams(self._swap(cfg, p.tensors)), kinds, x, g)
        return dx, self._swap(cfg, grads)


class _ConfigMutant(BlockMutant):
    """The oracle run on a configuration with one field changed (`wrong`)."""

    wrong: dict = {}

    def _cfg(self, cfg):
        return dataclasses.replace(cfg, **{k: v for k, v in self.wrong.items() if getattr(cfg, k) != v})

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(self._cfg(cfg), p, kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        return ref.update_vjp(self._cfg(cfg), p, kinds, x, g)


class BidirectionalWhenCausal(_ConfigMutant):
    """Attention ignores the causal mask: every token sees the later ones."""

    wrong = {"causal": False}


class SandwichPostNormMissing(_ConfigMutant):
    """The norm on each branch's output (the sandwich's post-norm, Gemma 2/3; OLMo 2's only norm) is never
    applied: x + F(N(x)) where x + N_out(F(N(x))) is asked."""

    wrong = {"branch_norm": False}


class RopeHalfSplitWhenInterleaved(_ConfigMutant):
    """Rotary embeddings pair dimension i with i + d/2 (NeoX, Llama) where GPT-J's interleaved pairs (2i, 2i + 1)
    are asked."""

    wrong = {"rope_interleaved": False}


class CrossAttentionReadsStream(BlockMutant):
    """Cross-attention takes its keys and values from the decoder's own stream, not from the encoder's output
    (hidden_states passed where encoder_hidden_states belongs): bidirectional self-attention with the
    cross-attention's weights, and no gradient for the memory."""

    @staticmethod
    def forward(cfg, s, h):
        return ref.attention(dataclasses.replace(cfg, causal=False), s, h)

    @staticmethod
    def vjp(cfg, s, h, g):
        dh, grads = ref.attention_vjp(dataclasses.replace(cfg, causal=False), s, h, g)
        return dh, {**grads, "memory": np.zeros_like(s.memory)}

    def _stack_forward(self, cfg, params, x, dtype):
        with _entry(ref.BRANCH, "cross_attention", self.forward):
            return super()._stack_forward(cfg, params, x, dtype)

    def _stack_vjp(self, cfg, params, x, g, dtype):
        with _entry(ref.BRANCH, "cross_attention", self.forward), _entry(ref.BRANCH_VJP, "cross_attention", self.vjp):
            return super()._stack_vjp(cfg, params, x, g, dtype)


@contextmanager
def _entry(table, key, value):
    """table[key] is `value` for the duration (a branch of the oracle replaced)."""
    original = table[key]
    table[key] = value
    try:
        yield
    finally:
        table[key] = original


class LayerScaleIgnored(BlockMutant):
    """The per-channel LayerScale gain on each write is never applied."""

    def _unscaled(self, p):
        return p.replace({n: np.ones_like(t) for n, t in p.items() if n.endswith(".layer_scale")})

    def forward_block(self, cfg, p, kinds, x):
        return ref.update_forward(cfg, self._unscaled(p), kinds, x)

    def vjp_block(self, cfg, p, kinds, x, g):
        return ref.update_vjp(cfg, self._unscaled(p), kinds, x, g)


class ParallelNormsSwapped(BlockMutant):
    """A parallel layer with a norm per branch feeds each branch the other branch's norm."""

    def forward_block(self, cfg, p, kinds, x):
        if not cfg.parallel or cfg.shared_norm:
            return ref.update_forward(cfg, p, kinds, x)
        first, second = kinds
        w = (ref.write(cfg, first, p.sub(first), ref.norm(cfg, p.sub(second), x))
             + ref.write(cfg, second, p.sub(second), ref.norm(cfg, p.sub(first), x)))
        return x + w, w


class FusedStaleResidual(NumpyReference):
    """Fused add+norm returns the residual from before the add."""

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        out, _ = super()._fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
        return out, residual


class FusedSilentBroadcast(NumpyReference):
    """Fused add+norm lets NumPy broadcast a (1, C) residual or a wrong-length weight. Its public method
    rejects both (Backend's template), so BI-1 catches it only because it calls the hook: the proof that BI-1
    tests the subject, not the template (tests/test_backend_template.py)."""

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        s = x + residual
        return ref.NORM[kind](s, weight[: s.shape[-1]], bias, eps), s


class FusedNanToZero(NumpyReference):
    """Fused add+norm replaces NaN and Inf in its inputs by finite numbers before the add."""

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        return super()._fused_add_norm(np.nan_to_num(x), np.nan_to_num(residual), weight, bias, eps, kind, dtype,
                                      residual_in_fp32)


class FusedSilentDowncast(NumpyReference):
    """residual_in_fp32 is ignored: the new residual is rounded to the narrow dtype."""

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        return super()._fused_add_norm(x, residual, weight, bias, eps, kind, dtype, False)


class InverseRmsBfloat16(BlockMutant):
    """In the forward, every norm's inverse RMS (layernorm's 1 / std too) is rounded to bfloat16 before it scales
    the token (amd/IRON #139): each write of a token carries the same relative error while the stream dwarfs
    the writes (XB-6 in float32)."""

    @staticmethod
    def _rounded(stats):
        def rounded(x, eps):
            xhat, rstd = stats(x, eps)
            coarse = round_to(rstd, "bfloat16")
            return xhat * (coarse / rstd), coarse
        return rounded

    def _stack_forward(self, cfg, params, x, dtype):
        with _swapped(ops, "_rmsnorm_stats", self._rounded(ops._rmsnorm_stats)), \
                _swapped(ops, "_layernorm_stats", self._rounded(ops._layernorm_stats)):
            return super()._stack_forward(cfg, params, x, dtype)


class StreamTruncated(BlockMutant):
    """pre's residual add rounds toward zero in the working dtype instead of to nearest: each add loses about
    half an ulp, with the sign of x, at every layer."""

    def _stack_forward(self, cfg, params, x, dtype):
        self.dtype = dtype
        return super()._stack_forward(cfg, params, x, dtype)

    def forward_block(self, cfg, p, kinds, x):
        y, f = ref.update_forward(cfg, p, kinds, x)
        if cfg.placement != "pre" or self.dtype == "float64":
            return y, f
        nearest = np.asarray(y).astype(numpy_dtype(self.dtype))
        toward_zero = np.nextafter(nearest, np.zeros_like(nearest))
        return np.where(np.abs(nearest) > np.abs(y), toward_zero, nearest).astype(np.float64), f


class CotangentOverwritten(BlockMutant):
    """The backward accumulates d x_0 into the caller's cotangent buffer and returns that buffer (Liger #370)."""

    def _stack_vjp(self, cfg, params, x, g, dtype):
        grads = super()._stack_vjp(cfg, params, x, g, dtype)
        g[...] = grads.dx
        return StackGrads(dx=g, dparams=grads.dparams)


class FusedResidualInPlace(NumpyReference):
    """Fused add+norm writes x + residual into the caller's residual array and returns it as the new residual."""

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        out, s = super()._fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)
        residual[...] = s
        return out, residual


class KeyBiasGradientFromValue(BlockMutant):
    """The key bias gets the value bias's gradient (a fused QKV backward writing one slice twice): nonzero
    where softmax's invariance makes it exactly zero, at the scale of the other gradients."""

    def vjp_block(self, cfg, p, kinds, x, g):
        dx, dp = ref.update_vjp(cfg, p, kinds, x, g)
        if "attention.bk" in dp:
            dp["attention.bk"] = dp["attention.bv"].copy()
        return dx, dp


class Float32Outputs(NumpyReference):
    """Asked for bfloat16 or float16, it returns float32 results (an adapter that forgot its last cast): more
    accurate than the dtype allows, so within every error budget; the output dtype check catches it."""

    computes_in_float64 = False

    @staticmethod
    def _rounded(a, dtype):
        return None if a is None else round_to(a, accumulation_dtype(dtype))

    def _stack_forward(self, cfg, params, x, dtype):
        t = super()._stack_forward(cfg, params, x, dtype)
        return StackTrace(*(self._rounded(a, dtype) for a in (t.states, t.writes, t.final)))

    def _stack_vjp(self, cfg, params, x, g, dtype):
        grads = super()._stack_vjp(cfg, params, x, g, dtype)
        return StackGrads(dx=self._rounded(grads.dx, dtype),
                          dparams=tuple(p.map(lambda t: self._rounded(t, dtype)) for p in grads.dparams))


MUTANTS = (
    SkipDropped, SkipDetached, ResidualAddedTwice, ResidualScaled, PostAsPre, PlainWithSkip, WrongEps, GateIgnored,
    GradientScaled, AttentionGradientScaled, Float16Variance, FastVariance, RezeroInitTiny, Gpt2ScaleLinear, WrongGelu, NonDeterministic,
    LayoutSensitive, NanToZero, EmptyCrashes, NormStatisticsInFloat16, NanReplacedAfterNorm, RacyWeightGradient,
    Bfloat16WeightGradient, BlockwiseSoftmaxNoRescale, Gpt2DepthCountedTwice, Gpt2HalfWriteVariance, RopeOnValues,
    QkNormAfterRope, GqaWrongGroup, SwigluGateUpSwapped, BidirectionalWhenCausal, LayerScaleIgnored, ParallelNormsSwapped,
    FusedStaleResidual, FusedSilentBroadcast, FusedSilentDowncast, FusedNanToZero, Float32Outputs,
    KeyBiasGradientFromValue, SandwichPostNormMissing, RopeHalfSplitWhenInterleaved, WritesNothing,
    CrossAttentionReadsStream, InverseRmsBfloat16, StreamTruncated, CotangentOverwritten, FusedResidualInPlace,
)
# mutant -> the property IDs that must flag it: the catalogue's rows that name it (conformance/catalogue.py)
EXPECTED = catalogue.caught_by(MUTANTS)

# mutants that show only on the long-sequence cases or in another dtype than float64: the cases (a pytest
# -k expression) they run on
SELECTION = {Bfloat16WeightGradient: "long_sequence_vjp and bfloat16",
             BlockwiseSoftmaxNoRescale: "long_sequence_forward and float64",
             FastVariance: "forward_offset_mean",
             Float32Outputs: "(forward_matches_oracle or vjp_matches_oracle) and (bfloat16 or float16) and block",
             InverseRmsBfloat16: "error_growth and float32", StreamTruncated: "error_growth and float32"}
# the layer mutants break one feature of the presets: every dtype's cases, so the four dtypes of each case take
# four presets (conformance/hypothesis_helpers.fixed_structure)
PRESET_CASES = "preset and (forward_matches_oracle or vjp_matches_oracle or nan_and_inf_locality)"
SELECTION.update({m: PRESET_CASES for m in (RopeOnValues, QkNormAfterRope, GqaWrongGroup, SwigluGateUpSwapped,
                                            BidirectionalWhenCausal, LayerScaleIgnored, ParallelNormsSwapped,
                                            KeyBiasGradientFromValue, SandwichPostNormMissing,
                                            RopeHalfSplitWhenInterleaved)})
SELECTION[AttentionGradientScaled] = "gradient_ratio_on_presets and float64"
# the encoder-decoder's layers run in cases of their own (hypothesis_helpers.ENCDEC)
SELECTION[CrossAttentionReadsStream] = "encdec and (forward_matches_oracle or vjp_matches_oracle)"
# an attention over the wrong tokens also moves the presets' write variances off VG-3's band
SELECTION[BidirectionalWhenCausal] = f"({PRESET_CASES}) or (gpt2_init_on_presets and float64)"

# Each mutant under its own name, its class's: test ids, results and expected failures are keyed by a backend's
# `name`, and tests/test_mutants.py runs many mutants in one session, which refuses two backends of one name.
for _mutant in EXPECTED:
    _mutant.name = _mutant.__name__

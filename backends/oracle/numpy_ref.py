"""The float64 oracle: `NumpyReference`, the backend every other backend is compared with.

Layers are composed by hand from resconf.backends.oracle.numpy_ops: each branch and each placement's forward sits next
to its VJP, and a stack's VJP is reverse accumulation over the saved trajectory x_0 .. x_U (one state per update). Whatever dtype is asked for, it
computes in float64 (inputs arrive already rounded to that dtype), so it is the exact function of those
inputs up to float64 rounding. It is never fast; it is meant to be checked by eye, and against central finite
differences with `fd_directional_check` (tests/test_oracle.py, and the suite's GR-4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from resconf.backends.oracle import numpy_ops as ops
from resconf.backends import contract
from resconf.backends.base import Backend, Capabilities, FusedGrads, StackGrads, StackTrace
from resconf.backends.config import FEATURES, FUSED_KINDS, BlockConfig
from resconf.backends.dtypes import claims, round_to
from resconf.backends.fused_args import residual_dtype
from resconf.backends.params import LayerParams, check_params

NORM = {"layernorm": ops.layernorm, "rmsnorm": ops.rmsnorm}
NORM_VJP = {"layernorm": ops.layernorm_vjp, "rmsnorm": ops.rmsnorm_vjp}
Grads = dict  # {tensor name: gradient}, short names inside a sublayer, full names (kind.name) for a layer


def activation(cfg: BlockConfig):
    """(act, act_vjp) of the mlp."""
    if cfg.activation == "gelu":
        return (ops.gelu_tanh, ops.gelu_tanh_vjp) if cfg.gelu == "tanh" else (ops.gelu_exact, ops.gelu_exact_vjp)
    return {"relu": (ops.relu, ops.relu_vjp), "silu": (ops.silu, ops.silu_vjp)}[cfg.activation]


def norm(cfg: BlockConfig, s, x: np.ndarray) -> np.ndarray:
    """The norm whose gain and bias are s.norm_weight, s.norm_bias (a sublayer, or the final norm)."""
    return NORM[cfg.norm](x, s.norm_weight, s.norm_bias, cfg.eps)  # (B, T, C)


def norm_vjp(cfg: BlockConfig, s, x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    dx, dw, db = NORM_VJP[cfg.norm](x, s.norm_weight, s.norm_bias, cfg.eps, g)
    return dx, {"norm_weight": dw, "norm_bias": db}


def input_norm(cfg: BlockConfig, s, x: np.ndarray) -> np.ndarray:
    """What a pre-norm branch reads: N(x), or x itself without an input norm (OLMo 2)."""
    return norm(cfg, s, x) if cfg.input_norm else x


def input_norm_vjp(cfg: BlockConfig, s, x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    return norm_vjp(cfg, s, x, g) if cfg.input_norm else (g, {})


# --- the branches F(h), each next to its VJP -> (dh, Grads) ---

def linear_branch(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    return ops.linear(h, s.w_out, s.b_out)  # (B, T, C)


def linear_branch_vjp(cfg: BlockConfig, s, h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    dh, dw, db = ops.linear_vjp(h, s.w_out, s.b_out, g)
    return dh, {"w_out": dw, "b_out": db}


def mlp_hidden(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    """act(h W_up), or act(h W_gate) * h W_up when gated (SwiGLU, GeGLU): what the down projection reads."""
    act, _ = activation(cfg)
    u = ops.linear(h, s.w_up, s.b_up)  # (B, T, H)
    return act(ops.linear(h, s.w_gate, s.b_gate)) * u if cfg.gated else act(u)


def mlp(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    """down(mlp_hidden(h))."""
    return ops.linear(mlp_hidden(cfg, s, h), s.w_down, s.b_down)  # (B, T, C)


def mlp_vjp(cfg: BlockConfig, s, h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    act, act_vjp = activation(cfg)
    u = ops.linear(h, s.w_up, s.b_up)
    v = ops.linear(h, s.w_gate, s.b_gate) if cfg.gated else None
    a = act(v) * u if cfg.gated else act(u)
    da, dw_down, db_down = ops.linear_vjp(a, s.w_down, s.b_down, g)
    grads = {"w_down": dw_down, "b_down": db_down}
    dh = 0.0
    if cfg.gated:  # product rule on act(v) * u
        du = da * act(v)
        dh, grads["w_gate"], grads["b_gate"] = ops.linear_vjp(h, s.w_gate, s.b_gate, act_vjp(v, da * u))
    else:
        du = act_vjp(u, da)
    dh_up, grads["w_up"], grads["b_up"] = ops.linear_vjp(h, s.w_up, s.b_up, du)
    return dh + dh_up, grads


def qk_norm(cfg: BlockConfig, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """RMSNorm of q or k (B, n, T, hd): over each head (Qwen 3), or over a token's whole projection, all
    n * hd values at once (OLMo 2 normalises before splitting the heads)."""
    if cfg.qk_norm_scope == "head":
        return ops.rmsnorm(a, w, None, cfg.eps)
    return ops.split_heads(ops.rmsnorm(ops.merge_heads(a), w, None, cfg.eps), a.shape[1])


def qk_norm_vjp(cfg: BlockConfig, a: np.ndarray, w: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(da, dw)."""
    if cfg.qk_norm_scope == "head":
        return ops.rmsnorm_vjp(a, w, None, cfg.eps, g)[:2]
    da, dw, _ = ops.rmsnorm_vjp(ops.merge_heads(a), w, None, cfg.eps, ops.merge_heads(g))
    return ops.split_heads(da, a.shape[1]), dw


def rope(cfg: BlockConfig, a: np.ndarray) -> np.ndarray:
    """RoPE on the first cfg.rope_dim dims of each head (a's whole head when None: widths come from the tensors,
    so a tensor-parallel shard's config with fewer heads computes the same rotation)."""
    return ops.rope(a, cfg.rope_base, cfg.rope_dim, cfg.rope_interleaved) if cfg.rope else a


def rope_vjp(cfg: BlockConfig, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return ops.rope_vjp(a, cfg.rope_base, g, cfg.rope_dim, cfg.rope_interleaved) if cfg.rope else g


def _attention_inputs(cfg: BlockConfig, s, h: np.ndarray):
    """q (B, nh, T, hd), k and v (B, nkv, T, hd) at each step: projected (q0, k0), QK-normed (q1, k1), rotated."""
    q0 = ops.split_heads(ops.linear(h, s.wq, s.bq), cfg.n_heads)
    k0 = ops.split_heads(ops.linear(h, s.wk, s.bk), cfg.kv_heads)
    v = ops.split_heads(ops.linear(h, s.wv, s.bv), cfg.kv_heads)
    q1 = qk_norm(cfg, q0, s.q_norm_weight) if cfg.qk_norm else q0
    k1 = qk_norm(cfg, k0, s.k_norm_weight) if cfg.qk_norm else k0
    return q0, k0, v, q1, k1, rope(cfg, q1), rope(cfg, k1)


def attention_context(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    """Each query's attention-weighted average of the values, heads merged: what the output projection reads.
    Causal or bidirectional, with n_kv_heads key/value heads shared by groups of queries."""
    *_, v, _, _, q, k = _attention_inputs(cfg, s, h)
    groups = cfg.n_heads // cfg.kv_heads
    o = ops.attention(q, ops.repeat_kv(k, groups), ops.repeat_kv(v, groups), cfg.causal)  # (B, nh, T, hd)
    return ops.merge_heads(o)  # (B, T, nh * hd)


def attention(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    """Self-attention: out(attention_context(h))."""
    return ops.linear(attention_context(cfg, s, h), s.wo, s.bo)  # (B, T, C)


def attention_vjp(cfg: BlockConfig, s, h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    q0, k0, v, q1, k1, q2, k2 = _attention_inputs(cfg, s, h)
    groups = cfg.n_heads // cfg.kv_heads
    kr, vr = ops.repeat_kv(k2, groups), ops.repeat_kv(v, groups)
    o = ops.attention(q2, kr, vr, cfg.causal)  # (B, nh, T, hd)
    do, dwo, dbo = ops.linear_vjp(ops.merge_heads(o), s.wo, s.bo, g)
    dq2, dkr, dvr = ops.attention_vjp(q2, kr, vr, o, cfg.causal, ops.split_heads(do, cfg.n_heads))
    dk2, dv = ops.repeat_kv_vjp(dkr, groups), ops.repeat_kv_vjp(dvr, groups)
    dq1, dk1 = rope_vjp(cfg, q1, dq2), rope_vjp(cfg, k1, dk2)
    grads = {"wo": dwo, "bo": dbo}
    dq0, dk0 = dq1, dk1
    if cfg.qk_norm:
        dq0, grads["q_norm_weight"] = qk_norm_vjp(cfg, q0, s.q_norm_weight, dq1)
        dk0, grads["k_norm_weight"] = qk_norm_vjp(cfg, k0, s.k_norm_weight, dk1)
    dh = 0.0
    for name, d in (("q", dq0), ("k", dk0), ("v", dv)):
        dh_part, grads[f"w{name}"], grads[f"b{name}"] = ops.linear_vjp(h, getattr(s, f"w{name}"),
                                                                       getattr(s, f"b{name}"), ops.merge_heads(d))
        dh = dh + dh_part
    return dh, grads


# --- cross-attention (an encoder-decoder's decoder): queries from h, keys and values from the memory s.memory
# (S, C), the encoder's output, shared by the batch; no mask, no RoPE, no QK-norm (config.py) ---

def batch_memory(s, h: np.ndarray) -> np.ndarray:
    return np.broadcast_to(s.memory, h.shape[:1] + s.memory.shape)  # (B, S, C)


def _cross_attention_inputs(cfg: BlockConfig, s, h: np.ndarray):
    """q (B, nh, T, hd) from the stream; k and v (B, nkv, S, hd) from the memory."""
    m = batch_memory(s, h)
    q = ops.split_heads(ops.linear(h, s.wq, s.bq), cfg.n_heads)
    k = ops.split_heads(ops.linear(m, s.wk, s.bk), cfg.kv_heads)
    return q, k, ops.split_heads(ops.linear(m, s.wv, s.bv), cfg.kv_heads)


def cross_attention_context(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    """Each query's average of the memory's values, every memory token seen, heads merged."""
    q, k, v = _cross_attention_inputs(cfg, s, h)
    groups = cfg.n_heads // cfg.kv_heads
    return ops.merge_heads(ops.attention(q, ops.repeat_kv(k, groups), ops.repeat_kv(v, groups), False))  # (B, T, nh hd)


def cross_attention(cfg: BlockConfig, s, h: np.ndarray) -> np.ndarray:
    return ops.linear(cross_attention_context(cfg, s, h), s.wo, s.bo)  # (B, T, C)


def cross_attention_vjp(cfg: BlockConfig, s, h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    """(dh, Grads): dh through the queries only; the memory collects its keys' and values' gradients, summed
    over the batch that shares it."""
    q, k, v = _cross_attention_inputs(cfg, s, h)
    groups = cfg.n_heads // cfg.kv_heads
    kr, vr = ops.repeat_kv(k, groups), ops.repeat_kv(v, groups)
    o = ops.attention(q, kr, vr, False)  # (B, nh, T, hd)
    do, dwo, dbo = ops.linear_vjp(ops.merge_heads(o), s.wo, s.bo, g)
    dq, dkr, dvr = ops.attention_vjp(q, kr, vr, o, False, ops.split_heads(do, cfg.n_heads))
    dk, dv = ops.repeat_kv_vjp(dkr, groups), ops.repeat_kv_vjp(dvr, groups)
    m = batch_memory(s, h)
    dh, dwq, dbq = ops.linear_vjp(h, s.wq, s.bq, ops.merge_heads(dq))
    dm_k, dwk, dbk = ops.linear_vjp(m, s.wk, s.bk, ops.merge_heads(dk))
    dm_v, dwv, dbv = ops.linear_vjp(m, s.wv, s.bv, ops.merge_heads(dv))
    return dh, {"wq": dwq, "bq": dbq, "wk": dwk, "bk": dbk, "wv": dwv, "bv": dbv, "wo": dwo, "bo": dbo,
                "memory": np.sum(dm_k + dm_v, axis=0)}  # (S, C)


BRANCH = {"linear": linear_branch, "mlp": mlp, "attention": attention, "cross_attention": cross_attention}
# What each branch's output projection multiplies (VG-2, VG-3 band a write's variance over that projection).
PROJECTION_INPUT = {"linear": lambda cfg, s, h: h, "mlp": mlp_hidden, "attention": attention_context,
                    "cross_attention": cross_attention_context}
# Each branch's output projection (weight, bias): what multiplies PROJECTION_INPUT into the write.
OUTPUT_PROJECTION = {"linear": ("w_out", "b_out"), "mlp": ("w_down", "b_down"), "attention": ("wo", "bo"),
                     "cross_attention": ("wo", "bo")}
BRANCH_VJP = {"linear": linear_branch_vjp, "mlp": mlp_vjp, "attention": attention_vjp,
              "cross_attention": cross_attention_vjp}


# --- a sublayer's write w = branch_scale * layer_scale * N_out(F(h)) (LayerScale is a per-channel gain;
# N_out, the norm on the branch's output, only with cfg.branch_norm) ---

def branch_output(cfg: BlockConfig, kind: str, s, h: np.ndarray) -> np.ndarray:
    f = BRANCH[kind](cfg, s, h)  # (B, T, C)
    return NORM[cfg.norm](f, s.branch_norm_weight, s.branch_norm_bias, cfg.eps) if cfg.branch_norm else f


def branch_output_vjp(cfg: BlockConfig, kind: str, s, h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    if not cfg.branch_norm:
        return BRANCH_VJP[kind](cfg, s, h, g)
    df, dw, db = NORM_VJP[cfg.norm](BRANCH[kind](cfg, s, h), s.branch_norm_weight, s.branch_norm_bias, cfg.eps, g)
    dh, grads = BRANCH_VJP[kind](cfg, s, h, df)
    return dh, {**grads, "branch_norm_weight": dw, "branch_norm_bias": db}


def _write_scale(cfg: BlockConfig, s):
    return cfg.branch_scale if s.layer_scale is None else cfg.branch_scale * s.layer_scale


def write(cfg: BlockConfig, kind: str, s, h: np.ndarray) -> np.ndarray:
    return _write_scale(cfg, s) * branch_output(cfg, kind, s, h)  # (B, T, C)


def write_vjp(cfg: BlockConfig, kind: str, s, h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Grads]:
    dh, grads = branch_output_vjp(cfg, kind, s, h, _write_scale(cfg, s) * g)
    if s.layer_scale is not None:
        grads["layer_scale"] = ops.sum_leading(g * cfg.branch_scale * branch_output(cfg, kind, s, h))
    return dh, grads


# --- one update of the stream (one sublayer, or a parallel layer's sublayers together): the placements ---

def update_forward(cfg: BlockConfig, p: LayerParams, kinds: tuple[str, ...], x: np.ndarray):
    """(y, w): the new stream state and the write next to the skip (before any ReZero gate)."""
    if cfg.placement == "pre":
        w = sum(write(cfg, k, p.sub(k), input_norm(cfg, p.sub(cfg.norm_owner(k)), x)) for k in kinds)
        return cfg.skip * x + w, w  # s x + sum_k w_k(N_k(x))
    kind = kinds[0]
    s = p.sub(kind)
    w = write(cfg, kind, s, x)  # every other placement feeds the raw stream to the branch
    if cfg.placement in ("post", "deepnorm"):
        return norm(cfg, s, cfg.skip * x + w), w  # N(s x + w(x)); deepnorm's s is alpha
    if cfg.placement == "rezero":
        return cfg.skip * x + s.gate * w, w  # s x + a w(x); no norm
    return w, w  # plain: w(x), no skip


def update_vjp(cfg: BlockConfig, p: LayerParams, kinds: tuple[str, ...], x: np.ndarray, g: np.ndarray):
    """(dx, Grads by full name) for cotangent g on the update's output at input x."""
    grads: Grads = {}

    def collect(kind: str, part: Grads) -> None:
        for name, t in part.items():
            if t is not None:
                key = f"{kind}.{name}"
                grads[key] = grads[key] + t if key in grads else t

    if cfg.placement == "pre":
        dx = cfg.skip * g  # the skip path
        for k in kinds:  # each branch path, through its norm
            owner = cfg.norm_owner(k)
            dh, part = write_vjp(cfg, k, p.sub(k), input_norm(cfg, p.sub(owner), x), g)
            dx_k, part_n = input_norm_vjp(cfg, p.sub(owner), x, dh)
            collect(k, part)
            collect(owner, part_n)
            dx = dx + dx_k
        return dx, grads
    kind = kinds[0]
    s = p.sub(kind)
    if cfg.placement == "rezero":
        dx_f, part = write_vjp(cfg, kind, s, x, s.gate * g)
        collect(kind, {**part, "gate": np.asarray(np.sum(g * write(cfg, kind, s, x)))})  # dL/da = <g, w(x)>
        return cfg.skip * g + dx_f, grads
    if cfg.placement == "plain":
        dx, part = write_vjp(cfg, kind, s, x, g)
        collect(kind, part)
        return dx, grads
    dz, part_n = norm_vjp(cfg, s, cfg.skip * x + write(cfg, kind, s, x), g)  # post, deepnorm: z = s x + w(x)
    dx_f, part = write_vjp(cfg, kind, s, x, dz)
    collect(kind, {**part, **part_n})
    return cfg.skip * dz + dx_f, grads  # skip path s dz, branch path J_w^T dz


def zero_grads(p: LayerParams) -> LayerParams:
    return p.map(np.zeros_like)


def add_grads(acc: LayerParams, grads: Grads) -> LayerParams:
    return acc.replace({name: acc[name] + t for name, t in grads.items()})


# --- stacks: depth layers, each a sequence of updates, then the optional final norm ---

def layer_updates(cfg: BlockConfig, params: Sequence[LayerParams]):
    """(layer index, its record, the sublayers of this update) in stream order: update u gives state u + 1."""
    return [(layer, p, kinds) for layer, p in enumerate(params) for kinds in cfg.updates]


def stack_forward(cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray) -> StackTrace:
    states, writes = [x], []
    for _, p, kinds in layer_updates(cfg, params):
        x, w = update_forward(cfg, p, kinds, x)
        states.append(x)
        writes.append(w)
    final = norm(cfg, params[-1].sub("final"), x) if cfg.final_norm else None
    return StackTrace(states=np.stack(states),  # (U+1, B, T, C)
                      writes=np.asarray(writes).reshape((len(writes),) + states[0].shape),  # (U, B, T, C)
                      final=final)


def stack_vjp(cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray) -> StackGrads:
    """Reverse accumulation: g (on the stack's output) back through the final norm, then every update at its
    saved input state."""
    dx, dparams, _ = backward(cfg, params, x, g)
    return StackGrads(dx=dx, dparams=dparams)


def backward(cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray):
    """(dx_0, per-layer gradients, the cotangent on every state x_0 .. x_U)."""
    states = stack_forward(cfg, params, x).states
    dparams = [zero_grads(p) for p in params]
    if cfg.final_norm:
        g, part = norm_vjp(cfg, params[-1].sub("final"), states[-1], g)
        dparams[-1] = add_grads(dparams[-1], {f"final.{n}": t for n, t in part.items() if t is not None})
    cotangents = [g]
    for u, (layer, p, kinds) in reversed(list(enumerate(layer_updates(cfg, params)))):
        g, grads = update_vjp(cfg, p, kinds, states[u], g)
        dparams[layer] = add_grads(dparams[layer], grads)
        cotangents.append(g)
    return g, tuple(dparams), cotangents[::-1]


# --- the residual write and its Jacobian (GR-1, GR-2) ---

def residual_write(cfg: BlockConfig, p: LayerParams, kinds: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """What an update writes next to its skip: pre sum_k w_k(N_k(x)); rezero a w(x); post, deepnorm, plain w(x)."""
    w = update_forward(cfg, p, kinds, x)[1]
    return p.sub(kinds[0]).gate * w if cfg.placement == "rezero" else w


def residual_write_vjp(cfg: BlockConfig, p: LayerParams, kinds: tuple[str, ...], x: np.ndarray,
                       g: np.ndarray) -> np.ndarray:
    """J^T g for J the Jacobian of residual_write at x (input gradient only)."""
    if cfg.placement == "pre":
        dx = 0.0
        for k in kinds:
            s = p.sub(cfg.norm_owner(k))
            dx = dx + input_norm_vjp(cfg, s, x, write_vjp(cfg, k, p.sub(k), input_norm(cfg, s, x), g)[0])[0]
        return dx
    kind = kinds[0]
    s = p.sub(kind)
    return write_vjp(cfg, kind, s, x, s.gate * g if cfg.placement == "rezero" else g)[0]


def branch_jacobian(cfg: BlockConfig, p: LayerParams, kinds: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """Dense (N, N) Jacobian of residual_write at x, N = B*T*C, indices in x.ravel() order.

    Row i is J^T e_i = the VJP of the i-th basis vector: N VJPs, so for small shapes only. Its spectral norm
    (np.linalg.norm(J, 2)) is rho_l in GR-2's bound (1 - rho_l) ||g|| <= ||g + J^T g|| <= (1 + rho_l) ||g||.
    """
    basis = np.eye(x.size)
    return np.stack([residual_write_vjp(cfg, p, kinds, x, e.reshape(x.shape)).ravel() for e in basis])  # (N, N)


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
# ReLU is piecewise linear: a step of 1e-4 moves some of hundreds of pre-activations across the kink at 0, where
# the difference quotient is not the derivative (seen: 3e-2 relative error on w_up). At 1e-7 a crossing is ~1e-3
# likely per check; the stencil has no truncation error on the linear pieces and its rounding noise stays in
# the `noise` term.
RELU_FD_STEP = 1e-7


# A norm of a small vector (a branch's output, a whole q or k projection: rms ~ 1e-2 through 0.02-std weights)
# curves on the scale of that rms, so h = 1e-4 leaves a truncation error up to 1.3e-5 (seen: OLMo 2's layer under
# rezero, d wk); at 1e-5 it is gone and the rounding error stays below 1e-11 |f|.
SMALL_NORM_FD_STEP = 1e-5


def fd_step(cfg: BlockConfig) -> float:
    if cfg.activation == "relu" and "mlp" in cfg.sublayers:
        return RELU_FD_STEP
    return SMALL_NORM_FD_STEP if cfg.branch_norm or (cfg.qk_norm and cfg.qk_norm_scope == "projection") else FD_STEP
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
    computes_in_float64 = True  # dtype only says what the inputs were rounded to

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(dtypes=claims("float64", "float32", "bfloat16", "float16"),
                            fused_kinds=frozenset(FUSED_KINDS), features=frozenset(FEATURES))

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}

    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        return stack_forward(cfg, params, _checked_stream(cfg, params, x))

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        return stack_vjp(cfg, params, _checked_stream(cfg, params, x), np.asarray(g, dtype=np.float64))

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        contract.check_fused_shapes(x, residual, weight, bias)  # NumPy would broadcast: the oracle's own guard
        return fused_add_norm(x, residual, weight, bias, eps, kind, residual_dtype(dtype, residual_in_fp32))

    def _fused_add_norm_vjp(self, x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                            residual_in_fp32=False) -> FusedGrads:
        contract.check_fused_shapes(x, residual, weight, bias)
        return fused_add_norm_vjp(x, residual, weight, bias, eps, kind, residual_dtype(dtype, residual_in_fp32),
                                  g_out, g_residual)


def _checked_stream(cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray) -> np.ndarray:
    """x as float64, and every layer's tensors as the parameter table says, or a ValueError (the oracle's
    own guard: NumPy would broadcast a wrong-width branch write, BI-1)."""
    check_params(cfg, params)
    return np.asarray(x, dtype=np.float64)

"""GR-3's band on the layers people ship: log(||grad x_0||^2 / ||g||^2) over the output projections' draw given
everything else. Everything else reaches the gradient through the Jacobian of what each update's output
projections multiply (its projection input a: the normed input of a linear branch, the mlp's activations,
attention's context) with respect to the stream x it reads, taken here from the oracle's own VJPs; each
update's step is stream_theory.projection_step, and the steps add up in stream_theory.log_ratio_band.
"""
from __future__ import annotations

import types

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import expected_std
from resconf.conformance import stream_theory

TOKEN_LOCAL = ("linear", "mlp")  # token t of a reads only token t of x


def stack_band(cfg: BlockConfig, params, x: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """(E, sd) of log(||grad x_0||^2 / ||g||^2) for a pre stack of projection writes (no norm on the branch's
    output, no LayerScale), given the oracle's stream and cotangents; a final norm's part, log(||g_U||^2 /
    ||g||^2), is the oracle's own (it draws no output projection)."""
    cotangents = ref.backward(cfg, params, x, g)[2]
    mean, sd = stream_theory.log_ratio_band(stack_steps(cfg, params, x, g))
    return mean + float(np.log(np.sum(cotangents[-1] ** 2) / np.sum(g * g))), sd


def stack_steps(cfg: BlockConfig, params, x: np.ndarray, g: np.ndarray) -> list[tuple[float, float]]:
    """Each update's (e, v) (stream_theory.projection_step) at the oracle's state and cotangent."""
    states = ref.stack_forward(cfg, params, x).states
    cotangents = ref.backward(cfg, params, x, g)[2]
    std_out = expected_std(cfg, "out") * cfg.branch_scale
    return [stream_theory.projection_step(update_jacobian(cfg, p, kinds, states[u]), cotangents[u + 1], std_out)
            for u, (_, p, kinds) in enumerate(ref.layer_updates(cfg, params))]


def update_jacobian(cfg: BlockConfig, p, kinds: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """d a[b, t, h] / d x[b, s, c] as (B, T, H, T, C) for one pre update at input x (B, T, C); a parallel layer's
    sublayers side by side along H, as their output projections stack into one (test_variance.projection_inputs)."""
    return np.concatenate([_sublayer_jacobian(cfg, p, kind, x) for kind in kinds], axis=2)


def _sublayer_jacobian(cfg: BlockConfig, p, kind: str, x: np.ndarray) -> np.ndarray:
    """Rows J^T e by VJP probes on a, many at once: a token-local branch takes one probe e_h at every token
    (token t's VJP sees only its own), attention one probe per (token, h), each its own batch element."""
    sub = _with_identity_projection(kind, p.sub(kind))
    norm_sub = p.sub(cfg.norm_owner(kind))
    B, T, C = x.shape
    H = getattr(sub, ref.OUTPUT_PROJECTION[kind][0]).shape[0]
    if kind in TOKEN_LOCAL:  # every (probe, token) one row of a single long sequence: one matmul per op
        probes = np.repeat(np.eye(H), B * T, axis=0).reshape(1, H * B * T, H)
        xs = np.tile(x.reshape(1, B * T, C), (1, H, 1))
        rows = _vjp(cfg, kind, sub, norm_sub, xs, probes).reshape(H, B, T, C)
        jac = np.zeros((B, T, H, T, C))
        diagonal = np.arange(T)
        jac[:, diagonal, :, diagonal, :] = rows.transpose(2, 1, 0, 3)  # (T, B, H, C): token t's block
        return jac
    probes = np.tile(np.eye(T * H).reshape(T * H, T, H), (B, 1, 1))
    rows = _vjp(cfg, kind, sub, norm_sub, np.repeat(x, T * H, axis=0), probes)
    return rows.reshape(B, T, H, T, C)


def _with_identity_projection(kind: str, sub) -> types.SimpleNamespace:
    """The sublayer with its output projection replaced by the identity: its VJP is then a's."""
    weight, bias = ref.OUTPUT_PROJECTION[kind]
    return types.SimpleNamespace(**{**vars(sub), weight: np.eye(getattr(sub, weight).shape[0]), bias: None})


def _vjp(cfg: BlockConfig, kind: str, sub, norm_sub, x: np.ndarray, g_a: np.ndarray) -> np.ndarray:
    """x's cotangent for cotangent g_a on a(x) = projection input of branch(input_norm(x))."""
    dh, _ = ref.BRANCH_VJP[kind](cfg, sub, ref.input_norm(cfg, norm_sub, x), g_a)
    return ref.input_norm_vjp(cfg, norm_sub, x, dh)[0]

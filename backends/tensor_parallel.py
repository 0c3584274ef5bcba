"""Megatron-style tensor parallelism of a residual layer, as data: which tensor is split along which axis.

Column-parallel input projections (q, k, v by heads, kv heads too; the mlp's up and gate by hidden columns,
with their biases), row-parallel output projections (wo, w_down by rows), one all-reduce of the partial
outputs, then the output bias and the residual add, once. Everything else (norms, LayerScale) is replicated:
each rank normalises the full hidden vector itself. One pre-norm update on rank r of P:

    h = N(x)                                  # (B, T, C), replicated
    part_r = F_r(f(h))                        # (B, T, C): rank r's heads / hidden columns, no output bias
    x = s x + scale * (g(sum_r part_r) + b)   # the all-reduce, then bias and residual on the full sum

f is the identity forward and an all-reduce backward, g the reverse (Megatron's two operators). Shards are
contiguous blocks, so rank r owns query heads r nh/P .. and kv heads r nkv/P ..: with grouped queries (kv
head j serves query heads j G .. (j+1) G - 1) each rank's queries find their kv heads on the same rank.
This module is the spec every tensor-parallel adapter follows; `oracle/tensor_parallel.py` runs it in float64.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Sequence

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.params import LayerParams

BRANCHES = ("attention", "mlp")  # a linear branch has no hidden width to split
# tensor name -> the axis split over the ranks; every other tensor is replicated
SPLIT = {"attention.wq": 1, "attention.bq": 0, "attention.wk": 1, "attention.bk": 0, "attention.wv": 1,
         "attention.bv": 0, "attention.wo": 0,
         "mlp.w_gate": 1, "mlp.b_gate": 0, "mlp.w_up": 1, "mlp.b_up": 0, "mlp.w_down": 0}
OUT_BIAS = {"attention": "bo", "mlp": "b_down"}  # added once, after the all-reduce


# Layer features the tensor-parallel layers (torch/tp.py, jax/tp.py, the oracle's) do not compute, so never claim:
# a norm of the whole q or k projection needs statistics over every rank's heads; the rest are not written there.
NOT_SPLIT = frozenset({"branch_norm", "no_input_norm", "qk_norm_projection", "partial_rope", "interleaved_rope",
                       "attention_bias"})


def why_not(cfg: BlockConfig, ranks: int) -> str | None:
    """None when cfg splits over `ranks` ranks, else why not (the skip reason)."""
    if ranks < 1:
        return f"ranks={ranks} must be >= 1"
    if cfg.placement != "pre" or cfg.parallel or cfg.final_norm:
        return "tensor parallelism is defined for sequential pre-norm layers without a final norm"
    unsplit = sorted(cfg.features & NOT_SPLIT)
    if unsplit:
        return f"the tensor-parallel layers do not implement {', '.join(unsplit)}"
    if set(cfg.sublayers) - set(BRANCHES):
        return f"tensor parallelism splits the sublayers {' and '.join(BRANCHES)} only, not {cfg.sublayers}"
    sizes = {"n_heads": cfg.n_heads, "n_kv_heads": cfg.kv_heads, "d_ff": cfg.d_hidden}
    if "attention" not in cfg.sublayers:
        sizes = {"d_ff": cfg.d_hidden}
    if "mlp" not in cfg.sublayers:
        sizes.pop("d_ff")
    odd = [f"{name}={n}" for name, n in sizes.items() if n % ranks]
    return f"{', '.join(odd)} not divisible by P={ranks} ranks" if odd else None


def check(cfg: BlockConfig, ranks: int) -> None:
    reason = why_not(cfg, ranks)
    if reason is not None:
        raise ValueError(f"{cfg.describe()} cannot run on {ranks} tensor-parallel ranks: {reason}")


def _block(t: np.ndarray, axis: int, rank: int, ranks: int) -> np.ndarray:
    return np.split(np.asarray(t), ranks, axis=axis)[rank]


def shard_params(cfg: BlockConfig, params: LayerParams, rank: int, ranks: int) -> LayerParams:
    """Rank `rank`'s share of one layer: split tensors cut to their contiguous block, the rest whole."""
    check(cfg, ranks)
    return LayerParams({name: _block(t, SPLIT[name], rank, ranks) if name in SPLIT else np.asarray(t)
                        for name, t in params.items()})


def shard_stack(cfg: BlockConfig, params: Sequence[LayerParams], rank: int, ranks: int) -> tuple[LayerParams, ...]:
    return tuple(shard_params(cfg, p, rank, ranks) for p in params)


def gather_grads(per_rank: Sequence[LayerParams]) -> LayerParams:
    """One layer's full-shape gradients from every rank's: split tensors concatenated back along their axis;
    a replicated tensor's gradient is whole on every rank (f all-reduces what reaches the norm, the output
    bias sees the reduced cotangent), so rank 0's is taken."""
    first = per_rank[0]
    return LayerParams({name: np.concatenate([p[name] for p in per_rank], axis=SPLIT[name]) if name in SPLIT
                        else t for name, t in first.items()})


def gather_stack(per_rank: Sequence[Sequence[LayerParams]]) -> tuple[LayerParams, ...]:
    """per_rank[r][layer] -> one full record per layer."""
    return tuple(gather_grads([rank_layers[layer] for rank_layers in per_rank])
                 for layer in range(len(per_rank[0])))


def local_config(cfg: BlockConfig, ranks: int) -> BlockConfig:
    """The configuration one rank's shard computes: nh/P query heads, nkv/P kv heads, d_ff/P hidden units
    (the head dimension stays; a config derives it from d_model, so the shard's F reads widths from tensors)."""
    check(cfg, ranks)
    return dataclasses.replace(cfg, n_heads=cfg.n_heads // ranks, n_kv_heads=cfg.kv_heads // ranks,
                               d_ff=cfg.d_hidden // ranks)


def without_out_bias(s: types.SimpleNamespace, kind: str) -> types.SimpleNamespace:
    """A sublayer's tensors (LayerParams.sub) without the output bias: a rank's partial output has none."""
    return types.SimpleNamespace(**{**vars(s), OUT_BIAS[kind]: None})

"""Megatron's sequence parallelism on top of the tensor-parallel layer (torch/tp.py), as a per-rank layer.

The stream, the norms, the output bias and the residual live on this rank's T/P tokens; the normalised
tokens are all-gathered along the sequence before the column-parallel projections, and the row-parallel
partial outputs are reduce-scattered back to token blocks (instead of all-reduced). gloo has no
reduce-scatter, so it is an all-reduce and this rank's block: the same values. Replicated tensors used on a
token block (norm gain and bias, output bias, LayerScale) go through f, so their gradients are summed over
the ranks' tokens, as Megatron all-reduces its sequence-parallel parameters' gradients.

Plug it in as any third-party layer: `tp_layer = staticmethod(torch_sp.layer)` (tests/tp_mutants.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from resconf.backends import tensor_parallel as tp
from resconf.backends.parallel import launch as tp_launch
from resconf.backends.config import BlockConfig
from resconf.backends.torch.tp import PARTS, Shard, all_reduce, copy_to_ranks, norm, write


def token_block(t: torch.Tensor, group, reverse: bool = False) -> torch.Tensor:
    """This rank's block of tokens (B, T/P, C); `reverse` takes another rank's (a mutant's mistake)."""
    ranks, rank = dist.get_world_size(group), dist.get_rank(group)
    if t.shape[1] % ranks:
        raise ValueError(f"sequence parallelism needs T divisible by P: T={t.shape[1]}, P={ranks}")
    return t.chunk(ranks, dim=1)[ranks - 1 - rank if reverse else rank].contiguous()


def _all_gather(t: torch.Tensor, group) -> torch.Tensor:
    tp_launch.progress()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=1)  # (B, T, C)


class ScatterTokens(torch.autograd.Function):
    """A replicated (B, T, C) to this rank's block; backward all-gathers, so every rank's input gradient is whole."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return token_block(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None


class GatherTokens(torch.autograd.Function):
    """Token blocks to (B, T, C). Backward: `summed` (the full tensor feeds rank-local partial work, so its
    gradient is partial on each rank) reduce-scatters; else (a replicated result) takes this rank's block."""

    @staticmethod
    def forward(ctx, t, group, summed: bool):
        ctx.group, ctx.summed = group, summed
        return _all_gather(t, group)

    @staticmethod
    def backward(ctx, grad):
        return token_block(all_reduce(grad, ctx.group) if ctx.summed else grad, ctx.group), None, None


class ReduceScatterTokens(torch.autograd.Function):
    """Sum of the ranks' partial (B, T, C), this rank's block of it; backward all-gathers."""

    @staticmethod
    def forward(ctx, part, group, reverse: bool = False):
        ctx.group = group
        return token_block(all_reduce(part, group), group, reverse)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None, None


REPLICATED_ON_TOKENS = ("norm_weight", "norm_bias", "layer_scale", *tp.OUT_BIAS.values())


def layer(cfg: BlockConfig, shard: Shard, x: torch.Tensor, group, reverse_scatter: bool = False):
    """One layer on one rank, sequence-parallel; states and writes gathered to (B, T, C) for the suite."""
    s = {name: copy_to_ranks(t, group) if name.split(".", 1)[1] in REPLICATED_ON_TOKENS else t
         for name, t in shard.items()}
    xs = ScatterTokens.apply(x, group)  # (B, T/P, C)
    states, writes = [], []
    for kind in cfg.sublayers:
        h = GatherTokens.apply(norm(cfg, s, kind, xs), group, True)  # (B, T, C): every token, for attention
        out = ReduceScatterTokens.apply(PARTS[kind](cfg, s, h), group, reverse_scatter)  # (B, T/P, C)
        bias = s.get(f"{kind}.{tp.OUT_BIAS[kind]}")
        w = write(cfg, s, kind, out if bias is None else out + bias)
        xs = (xs if cfg.skip == 1.0 else cfg.skip * xs) + w
        states.append(GatherTokens.apply(xs, group, False))
        writes.append(GatherTokens.apply(w, group, False))
    return states, writes

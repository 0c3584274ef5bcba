"""Tensor-parallel residual layers in PyTorch: P CPU processes, torch.distributed with gloo.

Megatron's two operators are autograd Functions: `copy_to_ranks` (f: identity forward, all-reduce of the
input gradient backward) before the column-parallel input projections, `reduce_from_ranks` (g: all-reduce
forward, identity backward) after the row-parallel output projection. `layer` is one rank's share of a layer
(backends/tensor_parallel.py says which tensors it holds); a third party swaps in its own through
`tp_layer`, with the same signature (docs/adapter.md). `TorchTensorParallel` is the adapter side: it shards
the records, runs one job per rank on a launch kept for the session (backends/parallel/launch.py) and assembles
full-shape results.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from resconf.backends import tensor_parallel as tp
from resconf.backends.parallel import launch as tp_launch
from resconf.backends.base import StackGrads, StackTrace
from resconf.backends.config import BlockConfig
from resconf.backends.params import LayerParams, check_params
from resconf.backends.torch.blocks import activation, apply_rotary, rope_cos_sin
from resconf.backends.torch.dtypes import torch_dtype

Shard = dict[str, torch.Tensor]  # one layer's tensors on this rank, by full name (tensor_parallel.SPLIT)


def all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    """The sum over the ranks, on a copy (every collective reports itself: tp_launch.progress)."""
    tp_launch.progress()
    t = t.clone()
    dist.all_reduce(t, group=group)
    return t


class CopyToRanks(torch.autograd.Function):
    """f: every rank already holds h; each rank's gradient of h covers its own shard only, so sum them."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return h.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return all_reduce(grad, ctx.group), None


class ReduceFromRanks(torch.autograd.Function):
    """g: sum the ranks' partial outputs; the sum's gradient is the full cotangent on every rank."""

    @staticmethod
    def forward(ctx, part: torch.Tensor, group) -> torch.Tensor:
        return all_reduce(part, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_ranks(h: torch.Tensor, group) -> torch.Tensor:
    return CopyToRanks.apply(h, group)


def reduce_from_ranks(part: torch.Tensor, group) -> torch.Tensor:
    return ReduceFromRanks.apply(part, group)


# --- one rank's share of a layer ---

def norm(cfg: BlockConfig, s: Shard, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The sublayer's norm on the full hidden vector (replicated on every rank)."""
    w, b = s[f"{kind}.norm_weight"], s.get(f"{kind}.norm_bias")
    if cfg.norm == "layernorm":
        return F.layer_norm(x, (cfg.d_model,), w, b, cfg.eps)
    return F.rms_norm(x, (cfg.d_model,), w, cfg.eps)


def mlp_part(cfg: BlockConfig, s: Shard, h: torch.Tensor) -> torch.Tensor:
    """This rank's hidden columns, then its rows of w_down: a partial (B, T, C), no output bias."""
    u = F.linear(h, s["mlp.w_up"].T, s.get("mlp.b_up"))  # (B, T, H/P)
    act = activation(cfg)
    a = act(F.linear(h, s["mlp.w_gate"].T, s.get("mlp.b_gate"))) * u if cfg.gated else act(u)
    return F.linear(a, s["mlp.w_down"].T)  # (B, T, C)


def attention_part(cfg: BlockConfig, s: Shard, h: torch.Tensor) -> torch.Tensor:
    """This rank's query heads and their kv heads, then its rows of wo: a partial (B, T, C), no output bias."""
    B, T, _ = h.shape
    hd = cfg.head_dim

    def heads(name: str) -> torch.Tensor:
        t = F.linear(h, s[f"attention.w{name}"].T, s.get(f"attention.b{name}"))
        return t.view(B, T, t.shape[-1] // hd, hd).transpose(1, 2)  # (B, heads on this rank, T, hd)

    q, k, v = heads("q"), heads("k"), heads("v")
    if cfg.qk_norm:
        q = F.rms_norm(q, (hd,), s["attention.q_norm_weight"], cfg.eps)
        k = F.rms_norm(k, (hd,), s["attention.k_norm_weight"], cfg.eps)
    if cfg.rope:
        cos, sin = rope_cos_sin(T, hd, cfg.rope_base, q.dtype, q.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal, enable_gqa=k.shape[1] != q.shape[1])
    return F.linear(y.transpose(1, 2).reshape(B, T, -1), s["attention.wo"].T)  # (B, T, C)


PARTS = {"attention": attention_part, "mlp": mlp_part}


def write(cfg: BlockConfig, s: Shard, kind: str, out: torch.Tensor) -> torch.Tensor:
    """w = branch_scale * layer_scale * F, on the reduced output (after its bias)."""
    gain = s.get(f"{kind}.layer_scale")
    if gain is not None:
        return (cfg.branch_scale * gain) * out
    return out if cfg.branch_scale == 1.0 else cfg.branch_scale * out


def layer(cfg: BlockConfig, shard: Shard, x: torch.Tensor, group) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One layer on one rank: per sublayer x = s x + w(g(F_r(f(N(x)))) + b). Returns the state after each
    update and each update's write, both (B, T, C) and the same on every rank."""
    states, writes = [], []
    for kind in cfg.sublayers:
        part = PARTS[kind](cfg, shard, copy_to_ranks(norm(cfg, shard, kind, x), group))  # (B, T, C)
        out = reduce_from_ranks(part, group)  # the all-reduce
        bias = shard.get(f"{kind}.{tp.OUT_BIAS[kind]}")
        w = write(cfg, shard, kind, out if bias is None else out + bias)  # bias once, on the sum
        x = (x if cfg.skip == 1.0 else cfg.skip * x) + w  # residual once
        states.append(x)
        writes.append(w)
    return states, writes


# --- what a rank runs ---

@dataclass(frozen=True)
class Job:
    cfg: BlockConfig
    shards: tuple[LayerParams, ...]  # this rank's, one per layer
    x: np.ndarray
    g: np.ndarray | None  # None: forward only
    dtype: str
    layer: Callable  # layer(cfg, shard, x, group) -> (states, writes)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def rank_server(timeout_s: float = tp_launch.JOB_TIMEOUT_S) -> Callable[[Job], object]:
    """Joins the gloo group from the torchrun-style environment; returns the job handler."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    group, rank = dist.group.WORLD, dist.get_rank()

    def handle(job: Job):
        td, vjp = torch_dtype(job.dtype), job.g is not None
        leaves = [{name: torch.tensor(t, dtype=torch.float64).to(td).requires_grad_(vjp) for name, t in p.items()}
                  for p in job.shards]
        x0 = torch.tensor(job.x, dtype=torch.float64).to(td).requires_grad_(vjp)
        states, writes = [x0], []
        with torch.set_grad_enabled(vjp):
            for shard in leaves:
                s, w = job.layer(job.cfg, shard, states[-1], group)
                states += s
                writes += w
        if not vjp:  # every rank holds the same trace; one sends it
            return (_numpy(torch.stack(states)), _numpy(torch.stack(writes))) if rank == 0 else None
        flat = [t for shard in leaves for t in shard.values()]
        g = torch.tensor(job.g, dtype=torch.float64).to(td)
        grads = torch.autograd.grad(states[-1], [x0, *flat], g, allow_unused=True)
        grads = [torch.zeros_like(t) if d is None else d for d, t in zip(grads, [x0, *flat])]
        it = iter(grads[1:])
        dshards = [LayerParams({name: _numpy(next(it)) for name in shard}) for shard in leaves]
        return _numpy(grads[0]), dshards

    return handle


class TorchTensorParallel:
    """Mixin for a Backend: tp_stack_forward and tp_stack_vjp on P gloo processes, each running `tp_layer`
    on its shard. Claim the rank counts in Capabilities(tensor_parallel=...)."""

    tp_layer = staticmethod(layer)  # one rank's layer(cfg, shard, x, group) -> (states, writes)
    tp_timeout_s = tp_launch.JOB_TIMEOUT_S  # per job; a rank silent for longer fails the case

    def _launch(self, ranks: int) -> tp_launch.Launch:
        """Every torch backend in a process shares the launch for P ranks: the layer travels with the job."""
        return tp_launch.Launch("resconf.backends.torch.tp:rank_server", ranks,
                                f"torch/gloo tensor-parallel, P={ranks}", env=(("OMP_NUM_THREADS", "1"),))

    def _tp_run(self, cfg, params, x, g, dtype, ranks):
        check_params(cfg, params)  # a shard of a wrong-shaped tensor would fail on the ranks, far from the cause
        jobs = [Job(cfg, tp.shard_stack(cfg, params, r, ranks), np.asarray(x, dtype=np.float64),
                    None if g is None else np.asarray(g, dtype=np.float64), dtype, self.tp_layer)
                for r in range(ranks)]
        return tp_launch.run(self._launch(ranks), jobs, self.tp_timeout_s)

    def _tp_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str,
                              ranks: int) -> StackTrace:
        states, writes = self._tp_run(cfg, params, x, None, dtype, ranks)[0]
        return StackTrace(states=states, writes=writes)

    def _tp_stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                      dtype: str, ranks: int) -> StackGrads:
        results = self._tp_run(cfg, params, x, g, dtype, ranks)
        return StackGrads(dx=results[0][0], dparams=tp.gather_stack([dshards for _, dshards in results]))

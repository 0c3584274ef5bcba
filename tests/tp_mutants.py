"""Broken tensor-parallel layers: each must be caught by the TP properties whose catalogue row names it
(conformance/catalogue.py; EXPECTED is read from there).

Each mutant is the torch tensor-parallel adapter with one rank-level mistake, plugged in the way a third
party plugs in its own layer: a per-rank `layer(cfg, shard, x, group)` set as `tp_layer`
(docs/adapter.md). `Control` plugs in the correct layer the same way and must pass. tests/test_tp_mutants.py
runs the suite on them.
"""
from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

from resconf.backends.torch import sp as torch_sp
from resconf.backends.torch import tp as ttp
from resconf.backends.base import Capabilities
from resconf.backends.config import FEATURES
from resconf.backends.dtypes import claims
from resconf.backends.oracle.numpy_ref import NumpyReference
from resconf.backends.tensor_parallel import OUT_BIAS
from resconf.conformance import catalogue


def _layer(cfg, shard, x, group, residual_per_rank=False, bias_per_rank=False, norm=ttp.norm):
    """torch_tp.layer with the residual, or the output bias, added on every rank before the all-reduce."""
    states, writes = [], []
    for kind in cfg.sublayers:
        part = ttp.PARTS[kind](cfg, shard, ttp.copy_to_ranks(norm(cfg, shard, kind, x), group))
        bias = shard.get(f"{kind}.{OUT_BIAS[kind]}")
        if bias_per_rank and bias is not None:
            part, bias = part + bias, None  # every rank adds it: P b after the sum
        if residual_per_rank:
            y = ttp.reduce_from_ranks(x + part, group)  # every rank adds x: P x after the sum
            y = y if bias is None else y + bias
            w = y - x
        else:
            w = ttp.reduce_from_ranks(part, group)
            w = w if bias is None else w + bias
            y = x + w
        states.append(y)
        writes.append(w)
        x = y
    return states, writes


def residual_on_every_rank(cfg, shard, x, group):
    return _layer(cfg, shard, x, group, residual_per_rank=True)


def bias_on_every_rank(cfg, shard, x, group):
    return _layer(cfg, shard, x, group, bias_per_rank=True)


def _norm_on_channel_shard(cfg, shard, kind, x):
    """Each block of C/P channels normalised with its own statistics (the layout of a rank that holds only
    its channels), the blocks put back together: the statistics of a shard, not of the hidden vector."""
    ranks = dist.get_world_size()
    blocks = zip(x.chunk(ranks, -1), shard[f"{kind}.norm_weight"].chunk(ranks),
                 (shard[f"{kind}.norm_bias"].chunk(ranks) if f"{kind}.norm_bias" in shard else [None] * ranks))
    eps = cfg.eps
    if cfg.norm == "layernorm":
        return torch.cat([torch.nn.functional.layer_norm(xb, xb.shape[-1:], w, b, eps) for xb, w, b in blocks], -1)
    return torch.cat([torch.nn.functional.rms_norm(xb, xb.shape[-1:], w, eps) for xb, w, _ in blocks], -1)


def norm_on_channel_shard(cfg, shard, x, group):
    return _layer(cfg, shard, x, group, norm=_norm_on_channel_shard)


HANG_MARK = "RESCONF_TEST_HANG_MARK"  # a file rank 1 creates as it starts to hang (tests/test_tensor_parallel.py)


def rank_one_hangs(cfg, shard, x, group):
    """Rank 1 never reaches the all-reduce; rank 0 waits in it."""
    if dist.get_rank() == 1:
        if os.environ.get(HANG_MARK):
            open(os.environ[HANG_MARK], "w").close()
        time.sleep(3600)
    return ttp.layer(cfg, shard, x, group)


def rank_one_crashes(cfg, shard, x, group):
    """Rank 1 segfaults before the all-reduce."""
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return ttp.layer(cfg, shard, x, group)


def sequence_scatter_mismatch(cfg, shard, x, group):
    return torch_sp.layer(cfg, shard, x, group, reverse_scatter=True)


def rank_one_raises(cfg, shard, x, group):
    if dist.get_rank() == 1:
        raise ValueError("rank 1 cannot shard this")
    return ttp.layer(cfg, shard, x, group)


class TPMutant(ttp.TorchTensorParallel, NumpyReference):
    """The oracle for single-device stacks; a torch tensor-parallel layer on P gloo ranks."""

    name = "tp_mutant"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(dtypes=claims("float64", "float32", "bfloat16", "float16"), features=frozenset(FEATURES),
                            tensor_parallel=frozenset({2, 4}))


class Control(TPMutant):
    """The correct layer, plugged in as a third party would."""

    tp_layer = staticmethod(ttp.layer)


class SequenceParallelControl(TPMutant):
    """The correct sequence-parallel layer (backends/torch/sp.py)."""

    tp_layer = staticmethod(torch_sp.layer)


class SequenceScatterMismatch(TPMutant):
    """Sequence parallel: the reduce-scatter hands rank r the token block the all-gather took from rank P-1-r."""

    tp_layer = staticmethod(sequence_scatter_mismatch)


class ResidualOnEveryRank(TPMutant):
    """Each rank adds the residual before the all-reduce: P x."""

    tp_layer = staticmethod(residual_on_every_rank)


class BiasOnEveryRank(TPMutant):
    """Each rank adds the output bias before the all-reduce: P b."""

    tp_layer = staticmethod(bias_on_every_rank)


class NormOnChannelShard(TPMutant):
    """The norm's statistics are taken over each rank's channel block, not the full hidden vector."""

    tp_layer = staticmethod(norm_on_channel_shard)


HANG_TIMEOUT_S = 10.0


class RankHangs(TPMutant):
    """Rank 1 sleeps instead of joining the all-reduce."""

    tp_layer = staticmethod(rank_one_hangs)
    tp_timeout_s = HANG_TIMEOUT_S


class RankCrashes(TPMutant):
    """Rank 1 dies of SIGSEGV."""

    tp_layer = staticmethod(rank_one_crashes)


class RankRaises(TPMutant):
    """Rank 1 raises (a harness check, not a mutant of a property: tests/test_tensor_parallel.py)."""

    tp_layer = staticmethod(rank_one_raises)


MUTANTS = (
    ResidualOnEveryRank, BiasOnEveryRank, NormOnChannelShard, SequenceScatterMismatch, RankHangs, RankCrashes,
)
# mutant -> the property IDs that must flag it: the catalogue's rows that name it (conformance/catalogue.py)
EXPECTED = catalogue.caught_by(MUTANTS)
# the cases (pytest -k) each runs: P = 2 in both dtypes (they meet both presets, so a bias mutant meets GPT-2's
# biases); a hang or crash fails every case alike, one dtype shows it
P2 = "float64-2] or float32-2]"
SELECTION = {m: P2 for m in EXPECTED} | {RankHangs: "float64-2]", RankCrashes: "float64-2]"}

# Each mutant under its own name, its class's: test ids, results and expected failures are keyed by a backend's
# `name`, and tests/test_tp_mutants.py runs several in one session, which refuses two backends of one name.
for _mutant in TPMutant.__subclasses__():
    _mutant.name = _mutant.__name__

"""Tensor-parallel residual layers in JAX: shard_map over a 1-D mesh "tp" of host CPU devices.

The device count is fixed when XLA starts (XLA_FLAGS=--xla_force_host_platform_device_count=N), so the
sharded stack runs in a process of its own, started with that flag by the launcher the torch ranks use
(backends/parallel/launch.py: one process holding TP_DEVICES devices serves every P up to it). In shard_map
each device sees its block of every split tensor (in_specs from tensor_parallel.SPLIT, the spec the torch
ranks shard by), computes its partial output with the single-device layer maths of jax/blocks.py at the
local head and hidden counts, and lax.psum is the all-reduce; the output bias and the residual come after
it, once. jax.vjp differentiates through shard_map: the transpose of reading the replicated h on every
device is the sum over devices, Megatron's f, derived rather than written.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from resconf.backends import tensor_parallel as tp
from resconf.backends.parallel import launch as tp_launch
from resconf.backends.base import StackGrads, StackTrace
from resconf.backends.config import BlockConfig
from resconf.backends.params import LayerParams, check_params

TP_DEVICES = 4  # host devices of the JAX rank process: the largest P claimed


@dataclass(frozen=True)
class Job:
    cfg: BlockConfig
    params: tuple[LayerParams, ...]  # full records: shard_map hands each device its block
    x: np.ndarray
    g: np.ndarray | None  # None: forward only
    dtype: str
    ranks: int


def rank_server():
    """Runs in the JAX process (after XLA_FLAGS is set): returns the job handler."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if len(jax.devices("cpu")) < TP_DEVICES:
        raise RuntimeError(f"expected {TP_DEVICES} host devices, JAX sees {len(jax.devices('cpu'))}: "
                           f"was XLA_FLAGS set before JAX started? ({jax.devices('cpu')})")
    return _handle


def _handle(job: Job):
    import jax

    from resconf.backends.jax import blocks as jb
    from resconf.backends.jax.dtypes import to_jax, to_numpy

    def native(a):
        return to_jax(a, job.dtype)

    layers = LayerParams({name: native(np.stack([p[name] for p in job.params])) for name, _ in job.params[0].items()})
    x, static, sc = native(job.x), jb.StaticBlock.of(tp.local_config(job.cfg, job.ranks)), jb.Scalars.of(job.cfg)
    names = tuple(name for name, _ in job.params[0].items())
    if job.g is None:
        states, writes = _forward_fn(static, names, job.ranks)(x, layers, sc)
        return to_numpy(states), to_numpy(writes)
    dx, dlayers = _vjp_fn(static, names, job.ranks)(x, layers, sc, native(job.g))
    return to_numpy(dx), tuple(LayerParams({name: to_numpy(dlayers[name][i]) for name in names})
                            for i in range(len(job.params)))


def _sharded_stack(static, names: tuple[str, ...], ranks: int):
    """stack(x, layers, scalars) -> (x_U, states (U, B, T, C), writes (U, B, T, C)), sharded over `ranks`
    devices: x, scalars and unsplit tensors replicated, split tensors by block along their SPLIT axis
    (one further along: the layers are stacked on axis 0 for the scan)."""
    import jax
    from jax import lax
    from jax.sharding import Mesh, PartitionSpec as P

    from resconf.backends.jax import blocks as jb

    mesh = Mesh(np.array(jax.devices("cpu")[:ranks]), ("tp",))

    def spec(name: str) -> P:
        if name not in tp.SPLIT:
            return P()
        return P(*([None] * (tp.SPLIT[name] + 1)), "tp")

    def update(x, p, kind, sc):
        s = p.sub(kind)
        part = jb.BRANCHES[kind](jb.layer_norm(x, s, static, sc), tp.without_out_bias(s, kind), static, sc)
        out = lax.psum(part, "tp")  # (B, T, C): the all-reduce
        bias = getattr(s, tp.OUT_BIAS[kind])
        out = out if bias is None else out + bias  # once, on the sum
        gain = sc.branch_scale.astype(jb.accumulator(out.dtype))
        w = jb.scaled(out, gain if s.layer_scale is None else gain * s.layer_scale.astype(gain.dtype))
        return jb.scaled(x, sc.skip) + w, w

    def body(x, layers, sc):
        def step(carry, p):
            states, writes = [], []
            for kind in static.sublayers:
                carry, w = update(carry, p, kind, sc)
                states.append(carry)
                writes.append(w)
            return carry, (jax.numpy.stack(states), jax.numpy.stack(writes))

        x_last, (states, writes) = lax.scan(step, x, layers)
        flat = (states.shape[0] * states.shape[1],) + x.shape
        return x_last, states.reshape(flat), writes.reshape(flat)

    in_specs = (P(), LayerParams({name: spec(name) for name in names}), P())
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(P(), P(), P()))


@functools.lru_cache(maxsize=None)
def _forward_fn(static, names, ranks):
    import jax
    import jax.numpy as jnp

    stack = _sharded_stack(static, names, ranks)

    def forward(x, layers, sc):
        _, states, writes = stack(x, layers, sc)
        return jnp.concatenate([x[None], states]), writes
    return jax.jit(forward)


@functools.lru_cache(maxsize=None)
def _vjp_fn(static, names, ranks):
    import jax

    stack = _sharded_stack(static, names, ranks)

    def vjp(x, layers, sc, g):
        _, pullback = jax.vjp(lambda x, layers: stack(x, layers, sc)[0], x, layers)
        return pullback(g)
    return jax.jit(vjp)


class JaxTensorParallel:
    """Mixin for a Backend: tp_stack_forward and tp_stack_vjp on P host devices of a JAX process of its own."""

    tp_timeout_s = tp_launch.JOB_TIMEOUT_S

    def _launch(self) -> tp_launch.Launch:
        import os

        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={TP_DEVICES}".strip()
        return tp_launch.Launch("resconf.backends.jax.tp:rank_server", 1, f"jax shard_map tensor-parallel, "
                                f"{TP_DEVICES} host devices", env=(("XLA_FLAGS", flags), ("JAX_PLATFORMS", "cpu")))

    def _tp_run(self, cfg, params, x, g, dtype, ranks):
        check_params(cfg, params)  # a wrong-shaped tensor would fail inside shard_map, far from the cause
        job = Job(cfg, tuple(params), np.asarray(x, dtype=np.float64),
                  None if g is None else np.asarray(g, dtype=np.float64), dtype, ranks)
        return tp_launch.run(self._launch(), [job], self.tp_timeout_s)[0]

    def _tp_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str,
                              ranks: int) -> StackTrace:
        states, writes = self._tp_run(cfg, params, x, None, dtype, ranks)
        return StackTrace(states=states, writes=writes)

    def _tp_stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                      dtype: str, ranks: int) -> StackGrads:
        dx, dparams = self._tp_run(cfg, params, x, g, dtype, ranks)
        return StackGrads(dx=dx, dparams=dparams)

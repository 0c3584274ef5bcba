"""JAX backend: the layer math of jax/blocks.py, jit-compiled, gradients from jax.vjp.

Compile cost decides the design (the suite calls a backend hundreds of times with drawn shapes):
  - a depth-L stack is one lax.scan over layer parameters stacked along a leading L axis, so depth is an
    array shape and the compiled program (one loop body) and its compile time do not grow with it; the
    final norm's tensors, in the last layer's record only, are split out and applied after the scan;
  - one jitted function per static configuration (StaticBlock), built once (lru_cache); jit's own
    cache then compiles once per (dtypes, shapes, depth, which tensors exist) and never again;
  - eps, the skip scalar (DeepNorm's alpha, skip_scale) and branch_scale are traced scalars, so drawing
    them does not recompile.
TRACES counts traces (each one is a compile) per function; tests and measurements read it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from typing import Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from resconf.backends.jax import blocks as jb
from resconf.backends import contract
from resconf.backends.base import (BENCH_EPS, Backend, Capabilities, DeviceUnavailable, FusedGrads, StackGrads,
                                   StackTrace)
from resconf.backends.config import FEATURES, FUSED_KINDS, BlockConfig
from resconf.backends.dtypes import claims
from resconf.backends.fused_args import residual_dtype
from resconf.backends.jax.dtypes import to_jax, to_numpy
from resconf.backends.jax.tp import JaxTensorParallel
from resconf.backends.params import LayerParams, check_params

# The execution modes it claims, as what each changes of the traced program (jax/blocks.StaticBlock)
MODE_STATICS = {"eager": {}, "default_precision": {"precision": "default"}, "mixed": {"compute": "bfloat16"}}
TRACES: Counter[str] = Counter()  # function name -> times traced (a Python side effect runs only then)


@functools.lru_cache(maxsize=None)
def _stack_forward_fn(static: jb.StaticBlock):
    def forward(x, layers, final, scalars):
        TRACES["stack_forward"] += 1
        _, states, writes, out = jb.stack(x, layers, final, static, scalars)
        return jnp.concatenate([x[None], states]), writes, out  # (U+1, B, T, C), (U, B, T, C), (B, T, C) or None
    return jax.jit(forward)


@functools.lru_cache(maxsize=None)
def _stack_output_fn(static: jb.StaticBlock):
    """The stack's output alone (no trace of states): what a forward-only benchmark times."""
    return jax.jit(lambda x, layers, final, scalars: jb.stack_output(x, layers, final, static, scalars))


@functools.lru_cache(maxsize=None)
def _stack_vjp_fn(static: jb.StaticBlock):
    def vjp(x, layers, final, g, scalars):
        TRACES["stack_vjp"] += 1
        _, pullback = jax.vjp(lambda *a: jb.stack_output(*a, static, scalars), x, layers, final)
        return pullback(g)  # (dx, dlayers stacked like layers, dfinal or None)
    return jax.jit(vjp)


@functools.lru_cache(maxsize=None)
def _fused_forward_fn(kind: str, residual_in_fp32: bool):
    def forward(x, residual, weight, bias, eps):
        TRACES["fused_add_norm"] += 1
        return jb.fused_add_norm(x, residual, weight, bias, eps, kind, residual_in_fp32)
    return jax.jit(forward)


@functools.lru_cache(maxsize=None)
def _fused_vjp_fn(kind: str, residual_in_fp32: bool):
    def vjp(x, residual, weight, bias, eps, g_out, g_residual):
        TRACES["fused_add_norm_vjp"] += 1
        _, pullback = jax.vjp(lambda *a: jb.fused_add_norm(*a, eps, kind, residual_in_fp32),
                              x, residual, weight, bias)
        return pullback((g_out, g_residual))  # (dx, dresidual, dweight, dbias or None)
    return jax.jit(vjp)


@functools.lru_cache(maxsize=None)
def _bench_fused_fn(kind: str, backward: bool):
    """f(x, residual, weight, bias, g_out): forward, or forward + backward of <g_out, out>."""
    eps = np.float64(BENCH_EPS)
    if not backward:
        return jax.jit(lambda x, r, w, b, g_out: jb.fused_add_norm(x, r, w, b, eps, kind, False))

    def forward_backward(x, r, w, b, g_out):
        (out, new_residual), pullback = jax.vjp(
            lambda *a: jb.fused_add_norm(*a, eps, kind, False), x, r, w, b)
        return pullback((g_out, jnp.zeros_like(new_residual)))
    return jax.jit(forward_backward)


def jax_device(backend: str, device: str):
    """JAX's first device of the kind asked for, with float64 on (process-wide, so here, not on import)."""
    jax.config.update("jax_enable_x64", True)
    platform = {"cpu": "cpu", "cuda": "gpu"}[device]
    try:
        return jax.devices(platform)[0]
    except RuntimeError as exc:
        raise DeviceUnavailable(f"backend {backend!r} on {device!r}: JAX sees no {platform} device ({exc}); "
                                f"install jax[cuda12] on a machine with a GPU, or use device='cpu'") from None


class JaxBackend(JaxTensorParallel, Backend):
    """Every placement, norm, sublayer and layer feature; float64, float32, bfloat16, float16; fused
    add+norm (rms, layer); tensor-parallel layers on 2 or 4 host CPU devices (shard_map, jax/tp.py)."""

    name = "jax"
    devices = ("cpu", "cuda")
    compiles_each_depth = True  # the scan's length is static: each depth is a program of its own

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self._device = jax_device(self.name, device)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(features=frozenset(FEATURES), dtypes=claims("float64", "float32", "bfloat16", "float16"),
                            fused_kinds=frozenset(FUSED_KINDS),
                            tensor_parallel=frozenset({2, 4}) if self.device == "cpu" else frozenset(),
                            modes=frozenset(MODE_STATICS))

    def versions(self) -> dict[str, str]:
        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}

    # --- stacks of layers ---
    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        layers, final = self._stacked(cfg, params, x, dtype)
        states, writes, out = _stack_forward_fn(self._static(cfg))(
            self.to_native(x, dtype), layers, final, jb.Scalars.of(cfg))
        return StackTrace(states=to_numpy(states), writes=to_numpy(writes),
                          final=None if out is None else to_numpy(out))

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        layers, final = self._stacked(cfg, params, x, dtype)
        dx, dlayers, dfinal = _stack_vjp_fn(self._static(cfg))(
            self.to_native(x, dtype), layers, final, self.to_native(g, dtype), jb.Scalars.of(cfg))
        return StackGrads(dx=to_numpy(dx), dparams=_unstack(params, dlayers, dfinal))

    # --- fused add+norm ---
    def _fused_add_norm(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                        eps: float, kind: str, dtype: str, residual_in_fp32: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        args = self._fused_args(x, residual, weight, bias, dtype, residual_in_fp32)
        out, new_residual = _fused_forward_fn(kind, residual_in_fp32)(*args, np.float64(eps))
        return to_numpy(out), to_numpy(new_residual)

    def _fused_add_norm_vjp(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                            eps: float, kind: str, dtype: str, g_out: np.ndarray, g_residual: np.ndarray,
                            residual_in_fp32: bool = False) -> FusedGrads:
        args = self._fused_args(x, residual, weight, bias, dtype, residual_in_fp32)
        grads = _fused_vjp_fn(kind, residual_in_fp32)(
            *args, np.float64(eps), self.to_native(g_out, dtype),
            self.to_native(g_residual, residual_dtype(dtype, residual_in_fp32)))
        dx, dresidual, dweight, dbias = grads
        return FusedGrads(to_numpy(dx), to_numpy(dresidual), to_numpy(dweight),
                          None if dbias is None else to_numpy(dbias))

    # --- benchmark hooks: jitted on first call with a new shape (call once in asv's setup) ---
    def to_native(self, a: np.ndarray, dtype: str) -> jax.Array:
        return to_jax(a, dtype, self._device)

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        contract.check_bench_fused(self, kind, dtype)
        return _bench_fused_fn(kind, backward)  # with_bias=False: pass bias=None (jit specialises on it)

    def bench_stack(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        layers, final, scalars = self._bench_stack_args(cfg, params, dtype)
        vjp = _stack_vjp_fn(jb.StaticBlock.of(cfg))
        return lambda x, g: vjp(x, layers, final, g, scalars)  # (dx, dlayers, dfinal)

    def bench_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        layers, final, scalars = self._bench_stack_args(cfg, params, dtype)
        forward = _stack_output_fn(jb.StaticBlock.of(cfg))
        return lambda x: forward(x, layers, final, scalars)

    def _bench_stack_args(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """(stacked layers, final norm, scalars) on the device, the claims and parameters checked eagerly."""
        contract.check_dtype(self, dtype)
        contract.check_blocks(self, cfg)
        check_params(cfg, params)
        return (*self._stack_params(params, dtype), jb.Scalars.of(cfg))

    def synchronize(self, result) -> None:
        jax.block_until_ready(result)

    def _static(self, cfg: BlockConfig) -> jb.StaticBlock:
        """The jit cache key of cfg in this backend's execution mode (backends/modes.py)."""
        return dataclasses.replace(jb.StaticBlock.of(cfg), **MODE_STATICS[self.mode])

    # --- conversion ---
    def _stack_params(self, params: Sequence[LayerParams], dtype: str) -> tuple[LayerParams, LayerParams | None]:
        """(the layers' tensors stacked along a new axis 0, the final norm's tensors or None): the final
        norm lives in the last record only, so it cannot be scanned over."""
        layers = LayerParams({name: self.to_native(np.stack([p[name] for p in params]), dtype)
                              for name, _ in params[0].items() if not name.startswith(jb.FINAL)})
        final = {name: self.to_native(t, dtype) for name, t in params[-1].items() if name.startswith(jb.FINAL)}
        return layers, LayerParams(final) if final else None

    def _stacked(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str
                 ) -> tuple[LayerParams, LayerParams | None]:
        """The parameters checked eagerly, naming both shapes (a shape error from inside jit would not say
        which tensor of which layer is wrong), then the stacked tensors."""
        check_params(cfg, params)
        return self._stack_params(params, dtype)

    def _fused_args(self, x, residual, weight, bias, dtype, residual_in_fp32):
        """The arrays on the device. jnp broadcasts a (1, C) residual silently, so the adapter's own guard
        rejects it here (BI-1 calls the hooks directly); the residual arrives in its residual dtype."""
        contract.check_fused_shapes(x, residual, weight, bias)
        return (self.to_native(x, dtype), self.to_native(residual, residual_dtype(dtype, residual_in_fp32)),
                self.to_native(weight, dtype), None if bias is None else self.to_native(bias, dtype))


def _unstack(params: Sequence[LayerParams], dlayers: LayerParams, dfinal: LayerParams | None
             ) -> tuple[LayerParams, ...]:
    """Per-layer float64 gradient records with the parameters' names in their order (the pytree's dicts
    come back with sorted keys); the final norm's gradients go to the last record."""
    stacked = {name: to_numpy(t) for name, t in dlayers.items()}  # (L, ...) each
    final = {} if dfinal is None else {name: to_numpy(t) for name, t in dfinal.items()}
    return tuple(LayerParams({name: final[name] if name.startswith(jb.FINAL) else stacked[name][layer]
                              for name, _ in p.items()})
                 for layer, p in enumerate(params))

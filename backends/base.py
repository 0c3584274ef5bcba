"""The public adapter API: what a backend implements, and how it says what it can do.

Every array crossing this border is a float64 NumPy array whose values are already representable in
the requested dtype (the suite rounds them first). A backend casts to `dtype` (exact), computes in
its own way on its own device, and returns float64 NumPy (exact upcast). The suite never sees a
framework tensor, so any framework, or none, can be plugged in.
"""
from __future__ import annotations

import copy
import warnings
from abc import ABC
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from resconf.backends import contract
from resconf.backends.config import BRANCHES, FEATURES, NORMS, PLACEMENTS, BlockConfig
from resconf.backends.dtypes import claims
from resconf.backends.modes import DEFAULT_MODE, check_mode
from resconf.backends.contract import dtype_error  # noqa: F401  re-exported: adapters outside backends/ use it
from resconf.backends.params import LayerParams

DEVICES = ("cpu", "cuda")  # what --device accepts
BENCH_EPS = 1e-5  # eps of the bench_fused_add_norm callables, which take no eps (nn.LayerNorm's default)


class BackendUnavailable(LookupError):
    """The named backend does not exist or its framework is not installed."""


class DeviceUnavailable(BackendUnavailable):
    """The backend cannot run on the device asked for: it does not offer it, or the machine has none.
    `resconf check` records the backend as skipped with this message, not as failed."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend claims; the suite skips (never fails) what is not claimed, and records the skip."""

    placements: frozenset[str] = frozenset(PLACEMENTS)
    norms: frozenset[str] = frozenset(NORMS)
    branches: frozenset[str] = frozenset(BRANCHES)
    features: frozenset[str] = frozenset()  # layer-model features it expresses (config.FEATURES)
    dtypes: frozenset[str] = claims("float64", "float32")
    fused_kinds: frozenset[str] = frozenset()  # fused add+norm kinds: "rmsnorm", "layernorm"
    blocks: bool = True  # False for a backend that only offers fused add+norm
    # A real module has a fixed structure: the sublayer lists its layer can have (None: any list of
    # `branches`) and the features every layer of it uses (LlamaDecoderLayer: always gated, always RoPE).
    layers: frozenset[tuple[str, ...]] | None = None
    requires: frozenset[str] = frozenset()
    tensor_parallel: frozenset[int] = frozenset()  # rank counts P its tensor-parallel layer runs on (TP-1, TP-2)
    # execution modes it runs (backends/modes.py); the suite runs each case in every one claimed and selected
    modes: frozenset[str] = frozenset({DEFAULT_MODE})

    def supports(self, cfg: BlockConfig) -> bool:
        return self.why_not(cfg) is None

    def why_not(self, cfg: BlockConfig) -> str | None:
        """None when the backend claims everything cfg needs, else what is missing (the skip reason)."""
        if not self.blocks:
            return "offers no residual blocks (fused add+norm only)"
        # `branches` claims the kinds a single-sublayer block can have; cross_attention is claimed as a feature
        missing = sorted(({cfg.placement} - self.placements) | ({cfg.norm} - self.norms)
                         | ((set(cfg.sublayers) & set(BRANCHES)) - self.branches) | (cfg.features - self.features))
        if missing:
            return f"does not claim {', '.join(missing)}"
        if self.layers is not None and tuple(cfg.sublayers) not in self.layers:
            return f"has layers of sublayers {' or '.join('+'.join(s) for s in sorted(self.layers))} only"
        if not self.requires <= cfg.features:
            return f"always uses {', '.join(sorted(self.requires - cfg.features))}"
        return None


@dataclass(frozen=True)
class StackTrace:
    """U = cfg.n_updates: one stream state per sublayer (per layer when parallel).

    `writes` is what the catalogue (docs/spec.md) calls a write: w = branch_scale * layer_scale * F, added
    next to the skip, so x_u = skip * x_{u-1} + gate * w_u. It is not x_u - x_{u-1} when a skip scale or a
    ReZero gate is set. Its old name `branches` still works, with a DeprecationWarning.
    """

    states: np.ndarray  # (U+1, B, T, C): x_0 .. x_U
    writes: np.ndarray  # (U, B, T, C): each update's write w next to the skip (before any ReZero gate)
    final: np.ndarray | None = None  # (B, T, C): the final norm of x_U, when cfg.final_norm

    def __init__(self, states: np.ndarray, writes: np.ndarray | None = None, final: np.ndarray | None = None,
                 *, branches: np.ndarray | None = None) -> None:
        if branches is not None:
            if writes is not None:
                raise TypeError("StackTrace got writes and branches: give writes only (branches is its old name)")
            _renamed("StackTrace(branches=...)", "StackTrace(writes=...)")
            writes = branches
        if writes is None:
            raise TypeError("StackTrace needs writes: (U, B, T, C), each update's write next to the skip")
        for name, value in (("states", states), ("writes", writes), ("final", final)):
            object.__setattr__(self, name, value)  # frozen: set once, here

    @property
    def branches(self) -> np.ndarray:
        """Deprecated: the old name of `writes`."""
        _renamed("StackTrace.branches", "StackTrace.writes")
        return self.writes

    @property
    def output(self) -> np.ndarray:
        """The stack's output, which stack_vjp's cotangent g is on: the final norm's, else x_U."""
        return self.states[-1] if self.final is None else self.final


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: use {new} (the same array, the catalogue's name for it)",
                  DeprecationWarning, stacklevel=3)


@dataclass(frozen=True)
class StackGrads:
    dx: np.ndarray  # (B, T, C): gradient w.r.t. x_0
    dparams: tuple[LayerParams, ...]  # same names as the parameters, one record per layer


@dataclass(frozen=True)
class FusedGrads:
    dx: np.ndarray  # (..., C)
    dresidual: np.ndarray  # (..., C)
    dweight: np.ndarray  # (C,)
    dbias: np.ndarray | None  # (C,) or None without bias


@dataclass(frozen=True)
class OpCall:
    """One torch.library op a fused add+norm runs, with the arguments it would get (XB-8 runs opcheck on it)."""

    op: object  # a torch.library custom op (CustomOpDef) or an OpOverload
    args: tuple  # framework tensors (differentiable ones requiring grad) and the op's other arguments


class Backend(ABC):
    """Base class of every backend: a template. The public methods check the call once (the dtype, the
    configuration and the fused kind claimed in `capabilities`; the shapes: backends/contract.py), then call
    the hook of the same name with a leading underscore, which is what an adapter implements.

    Required for blocks (capabilities.blocks): _stack_forward and _stack_vjp.
    Required for fused add+norm (capabilities.fused_kinds non-empty): _fused_add_norm, _fused_add_norm_vjp.
    Tensor-parallel layers (capabilities.tensor_parallel): _tp_stack_forward and _tp_stack_vjp.
    """

    name: str = "unnamed"
    devices: tuple[str, ...] = ("cpu",)
    # True only for the oracle (and what is built on its float64 code): it computes in float64 whatever
    # `dtype` asks, so its results are not values of `dtype`. Every other backend's are checked to be
    # (conformance/output_dtypes.py).
    computes_in_float64: bool = False
    # The built-in backend whose expected failures (conformance/xfails/<name>.toml) this adapter inherits,
    # because it runs that framework's ops: "torch" for a torch module's adapter. None: only its own.
    inherits_xfails: str | None = None
    # The execution mode its hooks run in (backends/modes.py): set on a copy by in_mode, read by the hooks.
    mode: str = DEFAULT_MODE
    # True when a stack of a new depth costs a compile (JAX's jit over a scan of length L): a property that
    # sweeps depth (GR-3, VG-3) then runs every depth as one full-length stack padded with blocks that change
    # nothing. An eager backend runs each depth as it is, at a fraction of the cost.
    compiles_each_depth: bool = False

    def __init__(self, device: str = "cpu") -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        if device not in self.devices:
            raise DeviceUnavailable(f"backend {self.name!r} runs on {', '.join(self.devices)}, not on {device}")
        self.device = device

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def versions(self) -> dict[str, str]:
        """Framework name -> version, recorded in every result row."""
        return {}

    def in_mode(self, mode: str) -> Backend:
        """A shallow copy of this backend that runs its hooks in execution mode `mode` (one it claims)."""
        check_mode(mode)
        if mode not in self.capabilities.modes:
            raise ValueError(f"backend {self.name!r} does not claim mode {mode!r}; it claims "
                             f"{', '.join(sorted(self.capabilities.modes))} (Capabilities.modes)")
        moded = copy.copy(self)
        moded.mode = mode
        return moded

    # --- The public API: the calling contract checked once (backends/contract.py), then the adapter's hook ---
    def stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str) -> StackTrace:
        """Run len(params) layers on x (B, T, C); return every stream state, every write and the final norm."""
        contract.check_stack_call(self, cfg, x, None, dtype)
        return self._stack_forward(cfg, params, x, dtype)

    def stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                  dtype: str) -> StackGrads:
        """Pull the cotangent g on the stack's output (StackTrace.output) back to x_0 and to every parameter (the framework's own autodiff)."""
        contract.check_stack_call(self, cfg, x, g, dtype)
        return self._stack_vjp(cfg, params, x, g, dtype)

    def tp_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str,
                         ranks: int) -> StackTrace:
        """stack_forward with every layer split over `ranks` tensor-parallel ranks (capabilities.tensor_parallel;
        the split: backends/tensor_parallel.py); states and writes as one device would return them."""
        contract.check_tp_call(self, cfg, x, None, dtype, ranks)
        return self._tp_stack_forward(cfg, params, x, dtype, ranks)

    def tp_stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                     dtype: str, ranks: int) -> StackGrads:
        """stack_vjp on `ranks` tensor-parallel ranks; every gradient full-shape (the ranks' shards put back)."""
        contract.check_tp_call(self, cfg, x, g, dtype, ranks)
        return self._tp_stack_vjp(cfg, params, x, g, dtype, ranks)

    def fused_add_norm(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                       eps: float, kind: str, dtype: str, residual_in_fp32: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(norm(x + residual) * weight (+ bias), x + residual); the sum is kept in float32 when
        residual_in_fp32, else in `dtype`."""
        contract.check_fused_call(self, x, residual, weight, bias, eps, kind, dtype)
        return self._fused_add_norm(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)

    def fused_add_norm_vjp(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                           eps: float, kind: str, dtype: str, g_out: np.ndarray, g_residual: np.ndarray,
                           residual_in_fp32: bool = False) -> FusedGrads:
        """Gradients of <g_out, out> + <g_residual, new_residual> w.r.t. x, residual, weight, bias."""
        contract.check_fused_call(self, x, residual, weight, bias, eps, kind, dtype,
                                  ("g_out", g_out), ("g_residual", g_residual))
        return self._fused_add_norm_vjp(x, residual, weight, bias, eps, kind, dtype, g_out, g_residual,
                                        residual_in_fp32)

    def fused_add_norm_ops(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                           eps: float, kind: str, dtype: str, residual_in_fp32: bool = False) -> tuple[OpCall, ...]:
        """Optional: the torch.library ops that fused_add_norm runs on these inputs, each with the arguments it
        would call it with. XB-8 runs torch.library.opcheck on each; () (the default) skips it."""
        contract.check_fused_call(self, x, residual, weight, bias, eps, kind, dtype)
        return self._fused_add_norm_ops(x, residual, weight, bias, eps, kind, dtype, residual_in_fp32)

    def init_params(self, cfg: BlockConfig, seed: int) -> tuple[LayerParams, ...]:
        """Optional: the backend's own initializer for scheme cfg.init. When offered, the suite runs the
        identity and variance properties on these parameters, so the scheme itself is under test."""
        raise NotImplementedError

    # --- The hooks an adapter implements: same arguments, already checked against the contract above ---
    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str
                       ) -> StackTrace:
        raise NotImplementedError(f"backend {self.name!r} does not implement stack_forward")

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        raise NotImplementedError(f"backend {self.name!r} does not implement stack_vjp")

    def _tp_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str,
                          ranks: int) -> StackTrace:
        raise NotImplementedError(f"backend {self.name!r} does not implement tp_stack_forward")

    def _tp_stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                      dtype: str, ranks: int) -> StackGrads:
        raise NotImplementedError(f"backend {self.name!r} does not implement tp_stack_vjp")

    def _fused_add_norm(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                        eps: float, kind: str, dtype: str, residual_in_fp32: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError(f"backend {self.name!r} does not implement fused_add_norm")

    def _fused_add_norm_vjp(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                            eps: float, kind: str, dtype: str, g_out: np.ndarray, g_residual: np.ndarray,
                            residual_in_fp32: bool = False) -> FusedGrads:
        raise NotImplementedError(f"backend {self.name!r} does not implement fused_add_norm_vjp")

    def _fused_add_norm_ops(self, x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                            eps: float, kind: str, dtype: str, residual_in_fp32: bool = False) -> tuple[OpCall, ...]:
        return ()

    # --- Optional hooks for the asv benchmarks: native arrays, no NumPy round trip in the timed region ---
    def to_native(self, a: np.ndarray, dtype: str):
        """a as this backend's own array type on its device, in `dtype`."""
        raise NotImplementedError(f"backend {self.name!r} offers no benchmark hooks")

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        """A ready (compiled, warmed-up) callable f(x, residual, weight, bias, g_out) on native arrays that
        runs the fused add+norm forward, and when `backward` also the backward; returns its outputs."""
        raise NotImplementedError(f"backend {self.name!r} offers no fused add+norm benchmark")

    def bench_stack(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """A ready callable f(x, g) on native arrays running the stack forward and backward."""
        raise NotImplementedError(f"backend {self.name!r} offers no stack benchmark")

    def bench_stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str):
        """A ready callable f(x) on native arrays running the stack forward only; returns its output."""
        raise NotImplementedError(f"backend {self.name!r} offers no forward-only stack benchmark")

    def synchronize(self, result) -> None:
        """Block until `result` (whatever a bench callable returned) has been computed on the device."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"



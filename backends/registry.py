"""Find backends by name without importing any framework until that backend is asked for.

A backend is named by one of:
  - a built-in name (`numpy`, `torch`, `jax`, ...), listed in BUILTIN below;
  - an entry point in the group `resconf.backends` of any installed distribution;
  - a path `package.module:attr` to a Backend subclass (or a factory taking `device`).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points

from resconf.backends.base import Backend, BackendUnavailable

ENTRY_POINT_GROUP = "resconf.backends"


@dataclass(frozen=True)
class BuiltinBackend:
    target: str  # "module:attr"
    requires: tuple[str, ...]  # top-level modules that must be importable
    extra: str = ""  # the pip extra that installs them (default: the first module's name)


BUILTIN = {
    "numpy": BuiltinBackend("resconf.backends.oracle.numpy_ref:NumpyReference", ("numpy",)),
    "torch": BuiltinBackend("resconf.backends.torch.backend:TorchBackend", ("torch",)),
    "torch_compile": BuiltinBackend("resconf.backends.torch.backend:TorchCompileBackend", ("torch",)),
    "jax": BuiltinBackend("resconf.backends.jax.backend:JaxBackend", ("jax",)),
    "numba_fused": BuiltinBackend("resconf.backends.kernels.numba_fused:NumbaFusedBackend", ("numba",)),
    "triton_fused": BuiltinBackend("resconf.backends.kernels.triton_fused:TritonFusedBackend", ("triton", "torch")),
    # the real modules and kernels people run, each mapped from the suite's parameters (optional extras)
    "torch_nn": BuiltinBackend("resconf.backends.modules.torch_nn:TorchNnBackend", ("torch",)),
    "hf_gpt2": BuiltinBackend("resconf.backends.modules.hf_blocks:HfGpt2Backend", ("transformers", "torch"), "hf"),
    "hf_llama": BuiltinBackend("resconf.backends.modules.hf_blocks:HfLlamaBackend", ("transformers", "torch"), "hf"),
    "hf_phi": BuiltinBackend("resconf.backends.modules.hf_blocks:HfPhiBackend", ("transformers", "torch"), "hf"),
    "flax_block": BuiltinBackend("resconf.backends.modules.flax_block:FlaxBlockBackend", ("flax", "jax")),
    "equinox_block": BuiltinBackend("resconf.backends.modules.equinox_block:EquinoxBlockBackend", ("equinox", "jax")),
    "liger": BuiltinBackend("resconf.backends.kernels.liger_fused:LigerFusedBackend", ("liger_kernel", "triton", "torch"), "liger"),
    # Liger's other casting modes (the default, "llama", is `liger`): all in float32, and none
    **{f"liger_{mode}": BuiltinBackend(f"resconf.backends.kernels.liger_fused:Liger{mode.title()}Backend",
                                       ("liger_kernel", "triton", "torch"), "liger") for mode in ("gemma", "none")},
    # positive controls: the oracle's maths rounded differently on purpose (backends/oracle/controls.py)
    **{f"control_{order}": BuiltinBackend(f"resconf.backends.oracle.controls:{cls}", ("numpy",))
       for order, cls in (("reversed", "ReversedControl"), ("fma", "FmaControl"),
                          ("pairwise", "PairwiseControl"), ("blocked", "BlockedControl"), ("wide", "WideControl"))},
}
# What `resconf check` runs when no backend is named: the block backends (kernels are opt-in on the CPU;
# on a GPU our Triton kernel joins them, and the oracle, a CPU reference, stands aside).
# The real modules join when their packages are installed (`pip install 'resconf[real]'`).
REAL_MODULES = ("torch_nn", "hf_gpt2", "hf_llama", "hf_phi", "flax_block", "equinox_block")
DEFAULT_BACKENDS = ("numpy", "torch", "jax", *REAL_MODULES)
DEFAULT_GPU_BACKENDS = ("torch", "jax", "triton_fused", "liger")


def default_backends(device: str = "cpu") -> tuple[str, ...]:
    """The installed ones of the default backends for `device`."""
    names = DEFAULT_BACKENDS if device == "cpu" else DEFAULT_GPU_BACKENDS
    return tuple(n for n in names if n in installed_builtins())


def installed_builtins() -> list[str]:
    """Built-in names whose frameworks are importable (checked with find_spec: nothing is imported)."""
    return [name for name, b in BUILTIN.items()
            if all(importlib.util.find_spec(module) is not None for module in b.requires)]


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def known_names() -> list[str]:
    return installed_builtins() + [n for n in entry_point_names() if n not in BUILTIN]


def load_backend(spec: str, device: str = "cpu") -> Backend:
    """An instance of the backend named `spec` on `device`; BackendUnavailable with the fix otherwise."""
    factory = _resolve(spec)
    backend = factory(device=device)
    if not isinstance(backend, Backend):
        raise BackendUnavailable(f"{spec!r} gave a {type(backend).__name__}, expected a backends.base.Backend")
    return backend


def _resolve(spec: str):
    if spec in BUILTIN:
        builtin = BUILTIN[spec]
        missing = [m for m in builtin.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailable(f"backend {spec!r} needs {', '.join(missing)}, which is not installed "
                                     f"(pip install 'resconf[{builtin.extra or builtin.requires[0]}]'); installed: {', '.join(known_names())}")
        return _import_target(builtin.target, spec)
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if eps:
        return eps[0].load()
    if ":" in spec:
        return _import_target(spec, spec)
    raise BackendUnavailable(f"unknown backend {spec!r}; installed: {', '.join(known_names())} "
                             f"(or give a path package.module:attr)")


def _import_target(target: str, spec: str):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {spec!r}: cannot import {module_name!r} ({exc}); "
                                 f"installed: {', '.join(known_names())}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendUnavailable(f"backend {spec!r}: module {module_name!r} has no attribute {attr!r}") from None

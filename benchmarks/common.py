"""Shared pieces of the asv suite: the parameter grids, seeded data, and backend loading that skips.

asv runs every parameter combination in a fresh process, and its runner may call `setup` again before
each timed call. So a benchmark's setup goes through the lru_cache'd case factories below: the first call
loads the backend, draws the data, builds the callable and runs it once (compilation and warm-up stay out
of the timed region); later calls are a cache hit. Whatever is unavailable (backend not installed or not
written yet, dtype, kind or device not claimed, no GPU) raises NotImplementedError, which asv records as
a skip. No framework is imported here: a backend imports its own when it is loaded, in setup (in asv's
forkserver, benchmarks/preload.py has imported the grid's frameworks once, before it forks a combination).

The bytes-moved formulas behind the GB/s figures live in reports/bytes_moved.py, one place for the
benchmarks' documentation and for the export that divides them by these times.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any, Callable

import numpy as np

from resconf.backends.base import Backend
from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import numpy_dtype, round_to
from resconf.backends.params import draw_params
from resconf.backends.registry import BUILTIN, BackendUnavailable, entry_point_names, load_backend
from resconf.reports.flops import PRESETS, preset_config

from . import device_timing as dt
from . import preload
from .numpy_baseline import NumpyBaseline

SEED = 0
TILE_ROWS = 256  # random_array draws this many rows and repeats them

# The default grid keeps `asv run --quick` of the whole suite within 5 minutes on a busy 2-core CPU machine:
# every combination is a fresh process that imports its framework (torch.compile alone needs 7-13 s there).
# RESCONF_BENCH_GRID=full is the nightly grid, for a quiet machine.
GRIDS = ("default", "full")
GRID = os.environ.get("RESCONF_BENCH_GRID", "default")
if GRID not in GRIDS:
    raise ValueError(f"RESCONF_BENCH_GRID={GRID!r} is not one of {GRIDS}; unset it for the default grid")
FULL = GRID == "full"

# The device is the run's, not a grid axis: a CPU runner's grid then has no cell that is n/a for want of a GPU.
# RESCONF_BENCH_DEVICE=cpu|cuda; by default cuda where an NVIDIA driver is loaded, else cpu. `device` stays a
# parameter (with this one value), so the benchmarks' ids, versions and earlier results keep their meaning.
# To time the CPU of a GPU machine too, run asv again with RESCONF_BENCH_DEVICE=cpu under its own machine name.
DEVICE_ENV = "RESCONF_BENCH_DEVICE"


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded, asked without importing a framework (a backend checks further)."""
    return os.path.exists("/proc/driver/nvidia/version")


def run_device(value: str | None) -> str:
    """The device RESCONF_BENCH_DEVICE's value names; unset or empty: cuda where a driver is loaded, else cpu."""
    if not value:
        return "cuda" if cuda_present() else "cpu"
    if value not in ("cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV}={value!r}: expected 'cpu' or 'cuda', or unset it for the default "
                         f"(cuda where an NVIDIA driver is loaded, else cpu)")
    return value


DEVICES = (run_device(os.environ.get(DEVICE_ENV)),)
# asv's `timer` of every timed class: CUDA events on a GPU, perf_counter on the CPU (benchmarks/device_timing.py).
# A class attribute, not code asv hashes, so the benchmarks' versions (and their history) stay as they were.
TIMER = dt.clock(DEVICES[0])
# In asv's forkserver only: torch, its compiler, jax and numba imported once, not in every combination.
PRELOADED = preload.preload_in_forkserver(DEVICES[0])
DTYPES = ("float32", "bfloat16")
BUILTIN_FUSED = ("numpy", "torch", "torch_compile", "jax", "numba_fused", "triton_fused", "liger")
SHAPES = ((512, 1024), (2048, 4096), (8192, 4096), (8192, 8192)) if FULL else ((8192, 4096),)  # (tokens, hidden)
WITH_BIAS = {"rmsnorm": False, "layernorm": True}  # as in the models: RMSNorm has no bias, LayerNorm has one

BUILTIN_STACK = ("torch", "jax")  # torch_compile claims no blocks (too slow to compile); numpy_ref is an oracle
STACK_SHAPES = ((512, 256),)  # (tokens, d_model): small, so that the stack is cheap on 2 cores
STACK_DEPTHS = (2, 8, 32) if FULL else (4,)
# The layers people run (bench_presets.py): GPT-2 small's width and a 1024-token sequence in the full grid;
# the default grid keeps the CI smoke within its budget on 2 cores with a quarter of that width, in float32.
PRESET_SHAPES = ((1024, 768),) if FULL else ((256, 256),)  # (tokens, d_model)
PRESET_DEPTHS = (2,)
PRESET_DTYPES = DTYPES if FULL else ("float32",)
MATMUL_SIZES = (2048,) if FULL else (1024,)  # n of the n x n matmul that measures the compute peak

# More backends for both grids, without editing this file: RESCONF_BENCH_BACKENDS=name,name,... where a name
# is what `resconf check --backend` takes (a built-in name, an entry point of the group resconf.backends, or
# a path package.module:attr). Read here, when asv imports the suite, since asv fixes its parameter lists
# then. Each joins both grids after the built-ins (whose benchmark ids and parameter positions stay as
# they are): which grid it is timed in is decided by its claims (fused_kinds; blocks), checked in setup
# like every claim, because reading them here would import its framework into asv's forkserver.
EXTRA_ENV = "RESCONF_BENCH_BACKENDS"


def extra_backends(value: str | None) -> tuple[str, ...]:
    """The names in RESCONF_BENCH_BACKENDS's value, checked without importing anything they name."""
    names = tuple(dict.fromkeys(n.strip() for n in (value or "").split(",") if n.strip()))
    if not names:
        return ()
    known = set(BUILTIN) | set(entry_point_names())  # entry points listed from metadata, not loaded
    bad = [n for n in names if n not in known and not _is_path(n)]
    if bad:
        raise ValueError(f"{EXTRA_ENV}: {', '.join(map(repr, bad))} is neither a built-in backend "
                         f"({', '.join(sorted(BUILTIN))}), an entry point of the group resconf.backends, nor a "
                         f"path package.module:attr; fix or drop it")
    return names


def _is_path(name: str) -> bool:
    module, sep, attr = name.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


EXTRA_BACKENDS = extra_backends(os.environ.get(EXTRA_ENV))
FUSED_BACKENDS = BUILTIN_FUSED + tuple(n for n in EXTRA_BACKENDS if n not in BUILTIN_FUSED)
STACK_BACKENDS = BUILTIN_STACK + tuple(n for n in EXTRA_BACKENDS if n not in BUILTIN_STACK)
# Kernels that run on the CPU only in Triton's interpreter (TRITON_INTERPRET=1): for tests, never timed there.
INTERPRETED_ON_CPU = ("triton_fused", "liger")


def per_sample(factory: Callable[..., "Case"]) -> Callable[..., "Case"]:
    """factory, lru_cache'd (one case per process), that flushes the GPU's L2 on every call: asv re-runs
    setup, and so this call, before every sample; the flush is outside the timed region and changes no
    benchmark's source, so their versions stand. Nothing happens on the CPU."""
    cached = lru_cache(maxsize=1)(factory)

    @wraps(factory)
    def case(*args) -> Case:
        made = cached(*args)
        dt.flush_l2(DEVICES[0])
        return made

    case.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return case


@dataclass(frozen=True)
class Case:
    """A ready benchmark: the timed statement is `sync(fn(*args))`."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    sync: Callable[[Any], None]


def load(name: str, device: str) -> Backend:
    """Backend `name` on `device`, or NotImplementedError (asv: skip) when it cannot run here."""
    if device == "cuda" and not cuda_present():
        raise NotImplementedError("no CUDA device on this machine")
    try:
        return load_backend(name, device)
    except (BackendUnavailable, ValueError) as exc:  # not installed, not written yet, or not on this device
        raise NotImplementedError(str(exc)) from exc


def require(claimed: bool, backend: Backend, what: str) -> None:
    if not claimed:
        raise NotImplementedError(f"backend {backend.name!r} on {backend.device} does not claim {what}")


def random_array(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Standard normal values (never zeros) representable in `dtype`, as float64: the adapter API's convention.

    At most TILE_ROWS rows are drawn and repeated down the leading axis: these ops run the same work on any
    values, and drawing 33M normals costs seconds of setup per process on a busy 2-core machine.
    """
    rows = min(shape[0], TILE_ROWS) if len(shape) > 1 else shape[0]
    drawn = np.random.default_rng(seed).standard_normal((rows, *shape[1:]), dtype=np.float32)
    tile = drawn.astype(numpy_dtype(dtype)).astype(np.float64)  # rounded from float32: exact, no double rounding
    return np.resize(tile, shape) if rows != shape[0] else tile


@per_sample
def fused_case(backend_name: str, device: str, kind: str, dtype: str, shape: tuple[int, int],
               backward: bool) -> Case:
    """Fused add+norm on random (tokens, hidden) inputs, the weight near 1 and a small bias."""
    backend = _fused_backend(backend_name, device)
    caps = backend.capabilities
    require(kind in caps.fused_kinds, backend, f"fused add+{kind}")
    require(dtype in caps.dtypes, backend, f"dtype {dtype}")
    with_bias = WITH_BIAS[kind]
    fn = backend.bench_fused_add_norm(kind, dtype, with_bias, backward)
    hidden = shape[1]
    x, residual, g_out = (random_array(shape, dtype, SEED + i) for i in range(3))
    weight = round_to(1.0 + 0.1 * random_array((hidden,), "float64", SEED + 3), dtype)
    bias = round_to(0.1 * random_array((hidden,), "float64", SEED + 4), dtype) if with_bias else None
    native = tuple(None if a is None else backend.to_native(a, dtype) for a in (x, residual, weight, bias, g_out))
    return warmed(Case(fn, native, backend.synchronize))


@per_sample
def stack_case(backend_name: str, device: str, dtype: str, shape: tuple[int, int], depth: int) -> Case:
    """A Pre-LN MLP stack, forward and backward, on one sequence of `tokens` (the MLP sees tokens only)."""
    cfg = BlockConfig(placement="pre", norm="layernorm", branch="mlp", depth=depth, d_model=shape[1])
    return _stack_case(load(backend_name, device), cfg, "Pre-LN MLP blocks", dtype, shape[0], backward=True)


@per_sample
def preset_case(backend_name: str, device: str, dtype: str, preset: str, shape: tuple[int, int], depth: int,
                backward: bool) -> Case:
    """A stack of a preset's layers (reports/flops.py: preset_config) on one sequence, forward (and backward)."""
    cfg = preset_config(preset, shape[1], depth)
    return _stack_case(load(backend_name, device), cfg, f"{preset} layers", dtype, shape[0], backward)


def _stack_case(backend: Backend, cfg: BlockConfig, what: str, dtype: str, tokens: int, backward: bool) -> Case:
    require(backend.capabilities.supports(cfg), backend, what)
    require(dtype in backend.capabilities.dtypes, backend, f"dtype {dtype}")
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, SEED, perturb=True))
    x, g = (backend.to_native(random_array((1, tokens, cfg.d_model), dtype, SEED + i), dtype) for i in range(2))
    if backward:
        return warmed(Case(backend.bench_stack(cfg, params, dtype), (x, g), backend.synchronize))
    return warmed(Case(backend.bench_stack_forward(cfg, params, dtype), (x,), backend.synchronize))


def _fused_backend(name: str, device: str) -> Backend:
    """`numpy` is the plain NumPy composition (benchmarks/numpy_baseline.py), not the float64 oracle."""
    if name in INTERPRETED_ON_CPU and device == "cpu":  # only Triton's interpreter (TRITON_INTERPRET=1) runs there
        raise NotImplementedError(f"{name} on the CPU is Triton's interpreter: for tests, not for timing")
    if name != "numpy":
        return load(name, device)
    if device not in NumpyBaseline.devices:
        raise NotImplementedError(f"the NumPy baseline runs on {NumpyBaseline.devices}, not on {device!r}")
    return NumpyBaseline(device)


def warmed(case: Case) -> Case:
    """case after one untimed call: compilation, caches and first-touch page faults happen here."""
    case.sync(case.fn(*case.args))
    return case

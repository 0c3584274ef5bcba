"""The memory-bandwidth roofline on each device: copy (1 read + 1 write) and add (2 reads + 1 write).

At the fused benchmarks' shapes, so that the export can divide a fused op's GB/s by the best streaming
kernel's GB/s measured on the same machine, commit and shape. CPU: NumPy (np.copyto, np.add with out=),
one thread, and the same two on every core (numba, prange over rows): one thread cannot saturate memory,
and under write-allocate caches an add counts more GB/s than a copy, so the export takes the best of the
four as the roofline. CUDA: torch, imported in setup only when a GPU is there, synchronised before the
clock stops. The device's last-level cache size is recorded too (a track_ benchmark): a shape whose bytes
fit in it can pass the roofline, and the export's flag says so.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from resconf.backends.dtypes import numpy_dtype

from . import common as cm

ROOFLINE_DTYPES = ("float32",)  # bandwidth is counted in bytes, so one dtype is enough


def _no_sync(result) -> None:
    """NumPy has finished when the call returns."""


@cm.per_sample
def roofline_case(op: str, device: str, dtype: str, shape: tuple[int, int]) -> cm.Case:
    """dst = src (op "copy") or out = a + b (op "add") on random (tokens, hidden) arrays, warmed up."""
    a, b = (cm.random_array(shape, dtype, cm.SEED + i) for i in range(2))
    if device == "cpu":
        a, b = (np.ascontiguousarray(t, numpy_dtype(dtype)) for t in (a, b))
        out = np.empty_like(a)
        case = cm.Case(np.copyto, (out, a), _no_sync) if op == "copy" else cm.Case(np.add, (a, b, out), _no_sync)
        return cm.warmed(case)
    return cm.warmed(_cuda_case(op, dtype, a, b))


def _cuda_case(op: str, dtype: str, a: np.ndarray, b: np.ndarray) -> cm.Case:
    if not cm.cuda_present():
        raise NotImplementedError("no CUDA device on this machine")
    try:
        import torch
    except ImportError as exc:
        raise NotImplementedError(f"the CUDA roofline is measured with torch, which is not installed ({exc})")
    if not torch.cuda.is_available():
        raise NotImplementedError("torch sees no CUDA device")
    ta, tb = (torch.from_numpy(t).to(device="cuda", dtype=getattr(torch, dtype)) for t in (a, b))
    out = torch.empty_like(ta)
    sync = lambda _: torch.cuda.synchronize()  # noqa: E731
    if op == "copy":
        return cm.Case(out.copy_, (ta,), sync)
    return cm.Case(lambda x, y: torch.add(x, y, out=out), (ta, tb), sync)


class _Roofline:
    op: str
    params = (cm.DEVICES, ROOFLINE_DTYPES, cm.SHAPES)
    param_names = ("device", "dtype", "shape")
    repeat = (5, 50, 1.0)
    min_run_count = 5
    rounds = 2  # cheap to set up, so a second process is affordable and catches placement noise
    warmup_time = 0.0
    timeout = 60
    timer = cm.TIMER  # CUDA events on a GPU (benchmarks/device_timing.py)

    def setup(self, device, dtype, shape):
        case = roofline_case(self.op, device, dtype, shape)
        self.fn, self.args, self.sync = case.fn, case.args, case.sync


class Copy(_Roofline):
    op = "copy"

    def time_copy(self, device, dtype, shape):
        self.sync(self.fn(*self.args))


class Add(_Roofline):
    op = "add"

    def time_add(self, device, dtype, shape):
        self.sync(self.fn(*self.args))


@lru_cache(maxsize=1)
def all_cores_case(op: str, dtype: str, shape: tuple[int, int]) -> cm.Case:
    """dst = src (op "copy") or out = a + b (op "add") with rows split over every core (numba's prange),
    compiled and warmed in setup."""
    try:
        from numba import njit, prange
    except ImportError as exc:
        raise NotImplementedError(f"the all-core {op} needs numba ({exc})")

    @njit(parallel=True, cache=True)
    def copy_rows(dst, src):
        for i in prange(src.shape[0]):
            dst[i] = src[i]

    @njit(parallel=True, cache=True)
    def add_rows(out, a, b):
        for i in prange(a.shape[0]):
            out[i] = a[i] + b[i]

    a, b = (np.ascontiguousarray(cm.random_array(shape, dtype, cm.SEED + i), numpy_dtype(dtype)) for i in range(2))
    if op == "copy":
        return cm.warmed(cm.Case(copy_rows, (np.empty_like(a), a), _no_sync))
    return cm.warmed(cm.Case(add_rows, (np.empty_like(a), a, b), _no_sync))


class _AllCores(_Roofline):
    def setup(self, device, dtype, shape):
        if device != "cpu":
            raise NotImplementedError(f"the all-core {self.op} is a CPU measurement")
        case = all_cores_case(self.op, dtype, shape)
        self.fn, self.args, self.sync = case.fn, case.args, case.sync


class CopyAllCores(_AllCores):
    op = "copy"

    def time_copy_all_cores(self, device, dtype, shape):
        self.sync(self.fn(*self.args))


class AddAllCores(_AllCores):
    op = "add"

    def time_add_all_cores(self, device, dtype, shape):
        self.sync(self.fn(*self.args))


def last_level_cache_bytes(device: str) -> int:
    """The largest cache of CPU 0 (sysfs) or the GPU's L2 (torch); NotImplementedError where it cannot be read."""
    if device == "cuda":
        try:
            import torch  # only reached on a machine with a GPU (DEVICES)
        except ImportError as exc:
            raise NotImplementedError(f"the GPU's L2 size is read with torch, which is not installed ({exc})")
        return int(torch.cuda.get_device_properties(0).L2_cache_size)
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
            sizes[int((index / "level").read_text())] = int(size.rstrip("KMG")) * _UNITS[size[-1]]
        except (OSError, ValueError, KeyError):
            continue
    if not sizes:
        raise NotImplementedError("no cache sizes under /sys/devices/system/cpu/cpu0/cache")
    return sizes[max(sizes)]


_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


class LastLevelCache:
    """Not a timing: the size a shape's bytes are compared with when a figure passes the roofline."""

    params = (cm.DEVICES,)
    param_names = ("device",)
    unit = "bytes"

    def setup(self, device):
        self.size = last_level_cache_bytes(device)

    def track_last_level_cache_bytes(self, device):
        return self.size

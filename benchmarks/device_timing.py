"""How a sample is timed on the run's device, and what the GPU was (issue 25, "GPU readiness").

- CPU: perf_counter, asv's default.
- CUDA: CUDA events (the GPU's own clock), after the warm-up call every case makes in setup, with the L2
  flushed before every sample: a case whose bytes fit in L2 (50 MB on an H100; the default preset stack,
  the matmul peak's 1024² operands, a (512, 1024) fused shape) would otherwise read what the previous
  sample left there, and report cache bandwidth as memory bandwidth. The flush writes a buffer of twice the
  L2's size and is waited for, outside the timed region; it is done for every case, since whether a case fits
  would have to count its weights and intermediates too, and a flush costs tens of microseconds.
- The GPU's name, driver and clocks from nvidia-smi (no framework imported), for asv's machine file
  (`python -m benchmarks.device_timing asv-machine`: asv copies its keys into every result's params) and for
  tools/gpu_bench.py's export.

torch is imported only where a sample is timed on a GPU, never when asv imports the suite. Without torch
installed (a jax-only GPU machine) the clock is perf_counter and nothing is flushed: asked without importing it.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

FLUSH_FACTOR = 2  # the flush buffer is this many times the L2: every line of the case is evicted
SMI_FIELDS = {  # nvidia-smi --query-gpu field -> the key recorded (asv machine file, export)
    "name": "gpu", "driver_version": "gpu_driver", "clocks.max.sm": "gpu_sm_clock_max",
    "clocks.max.mem": "gpu_mem_clock_max", "clocks.applications.graphics": "gpu_sm_clock_applications",
    "clocks.sm": "gpu_sm_clock_now"}
STABLE = ("gpu", "gpu_driver", "gpu_sm_clock_max", "gpu_mem_clock_max", "gpu_sm_clock_applications")


class CudaEventClock:
    """asv's `timer` on a GPU: seconds on the device's timeline. A reading records an event on the current
    stream and waits for it. The time is the previous reading's plus the interval between their events:
    cudaEventElapsedTime is float32 milliseconds, so an interval from one fixed start would lose resolution
    as the run goes on (7.8 µs after 100 s). asv reads it around each synchronised call, as it would
    perf_counter: a framework on its own streams (jax) is bracketed after its synchronisation."""

    def __init__(self) -> None:
        self._last = None
        self._seconds = 0.0

    def __call__(self) -> float:
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        if self._last is not None:
            self._seconds += self._last.elapsed_time(event) / 1e3
        self._last = event
        return self._seconds


def _torch_installed() -> bool:
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def clock(device: str) -> Callable[[], float]:
    """The clock asv's `timer` reads on `device`."""
    return CudaEventClock() if device == "cuda" and _torch_installed() else time.perf_counter


@lru_cache(maxsize=1)
def _flush_buffer():
    import torch

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return torch.empty(FLUSH_FACTOR * max(l2, 1 << 20), dtype=torch.int8, device="cuda")


def flush_l2(device: str) -> None:
    """Evict the GPU's L2 (zero a buffer twice its size) and wait for it; nothing on the CPU (its caches are
    not flushed: the CPU grid's shapes are far beyond them, and the export flags a cache-resident figure)."""
    if device != "cuda" or not _torch_installed():
        return
    import torch

    _flush_buffer().zero_()
    torch.cuda.synchronize()


def sample_seconds(device: str, run: Callable[[], None]) -> float:
    """Seconds `run` takes: perf_counter on the CPU; on a GPU the L2 flushed first, then CUDA events around it
    (run's own synchronisation included, as asv's time_ bodies synchronise)."""
    if device != "cuda" or not _torch_installed():
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    import torch

    flush_l2(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def gpu_info(query: Callable[[list[str]], str] | None = None) -> dict[str, str]:
    """The first GPU's name, driver and clocks (MHz) as nvidia-smi gives them; {} without nvidia-smi."""
    fields = list(SMI_FIELDS)
    try:
        text = (query or _smi)(fields)
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in text.strip().splitlines()[0].split(",")] if text.strip() else []
    if len(values) != len(fields):
        return {}
    return {SMI_FIELDS[f]: v for f, v in zip(fields, values) if v and "N/A" not in v and "Not Supported" not in v}


def _smi(fields: list[str]) -> str:
    done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, timeout=20, check=True)
    return done.stdout


def describe(info: dict[str, str]) -> str:
    """One line: 'NVIDIA H100 80GB HBM3, driver 550.54.15, SM max 1980 MHz (applications 1755), memory max 2619 MHz'."""
    if not info:
        return ""
    parts = [info.get("gpu", "GPU"), f"driver {info.get('gpu_driver', '?')}",
             f"SM max {info.get('gpu_sm_clock_max', '?')} MHz"
             + (f" (applications {info['gpu_sm_clock_applications']})" if "gpu_sm_clock_applications" in info else "")
             + (f", now {info['gpu_sm_clock_now']}" if "gpu_sm_clock_now" in info else ""),
             f"memory max {info.get('gpu_mem_clock_max', '?')} MHz"]
    return ", ".join(parts)


def asv_machine(name: str, info: dict[str, str], path: Path) -> dict:
    """Add the GPU's stable keys to machine `name` in asv's machine file (~/.asv-machine.json): asv copies every
    key of it into machine.json and into each result's params. The current clock stays out: asv's graphs split
    by params, and a clock that moves between runs would cut one machine's history into pieces."""
    data = json.loads(path.read_text()) if path.is_file() else {"version": 1}
    if name not in data:
        raise SystemExit(f"asv has no machine {name!r} in {path}: run `asv machine --machine {name} --yes` first")
    data[name].update({k: info[k] for k in STABLE if k in info})
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")
    return data[name]


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.device_timing info` prints the GPU's line; `asv-machine NAME` records it for asv."""
    argv = sys.argv[1:] if argv is None else argv
    info = gpu_info()
    if argv[:1] == ["asv-machine"] and len(argv) == 2:
        if not info:
            print("no GPU seen by nvidia-smi: nothing recorded", file=sys.stderr)
            return 1
        print(json.dumps(asv_machine(argv[1], info, Path.home() / ".asv-machine.json"), indent=1))
        return 0
    if argv == ["info"]:
        print(describe(info) or "no GPU seen by nvidia-smi")
        return 0 if info else 1
    print("usage: python -m benchmarks.device_timing info | asv-machine NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

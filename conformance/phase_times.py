"""Where a worker's time goes (docs/scaling.md's profile): opt-in with RESCONF_PHASE_TIMES=<folder>, each
worker then writes <folder>/<pid>.json with the seconds it spent per phase. Off, every hook is a no-op.

    with phase_times.phase("oracle"):                  # adds to the worker's total for "oracle"
        want = oracle.stack_forward(...)
    oracle = phase_times.Timed(oracle, "oracle")       # every method call of `oracle` timed so
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path

ENV = "RESCONF_PHASE_TIMES"
ON = bool(os.environ.get(ENV))
TOTALS: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)


def add(name: str, seconds: float, count: int = 1) -> None:
    TOTALS[name] += seconds
    COUNTS[name] += count


@contextlib.contextmanager
def phase(name: str):
    if not ON:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - started)


class Timed:
    """`target` with every method call timed under `name` (the oracle, the baseline, the subject)."""

    def __init__(self, target, name: str) -> None:
        self._target, self._name = target, name

    def __getattr__(self, attr: str):
        value = getattr(self._target, attr)
        if not callable(value):
            return value

        def timed(*args, **kwargs):
            with phase(self._name):
                return value(*args, **kwargs)
        return timed

    def __repr__(self) -> str:
        return repr(self._target)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc), so interpreter start and imports count too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))


def write(extra: dict) -> None:
    folder = Path(os.environ[ENV])
    folder.mkdir(parents=True, exist_ok=True)
    data = {"seconds": dict(TOTALS), "counts": dict(COUNTS), **extra}
    (folder / f"{os.getpid()}.json").write_text(json.dumps(data, indent=1, sort_keys=True))

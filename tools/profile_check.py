"""Where a cold `resconf check` spends its time (docs/scaling.md): runs it with RESCONF_PHASE_TIMES set and
prints a Markdown table of the seconds per phase, summed over each backend's workers.

    python tools/profile_check.py --backend numpy --backend torch --backend jax    # any `resconf check` args
    python tools/profile_check.py --cold ...    # JAX's compile cache and resconf's reference cache emptied first
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from resconf.conformance import phase_times
from resconf.conformance.worker import worker_defaults

INSIDE = ("oracle", "baseline", "framework calls", "recording the row")  # parts of "cases"


def main(argv: list[str]) -> int:
    cold = "--cold" in argv
    args = [a for a in argv if a != "--cold"]
    if cold:
        for folder in (worker_defaults("ci").get("JAX_COMPILATION_CACHE_DIR"), ".resconf/cache"):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="resconf-phases-") as tmp:
        started = time.monotonic()
        status = subprocess.call([sys.executable, "-m", "resconf", "check", *args],
                                 env={**os.environ, phase_times.ENV: tmp}, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - started
        per_backend: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for path in Path(tmp).glob("*.json"):
            data = json.loads(path.read_text())
            totals = per_backend[",".join(data["backends"])]
            for name, seconds in data["seconds"].items():
                totals[name] += seconds
                if name.startswith("jax"):
                    totals[name.split(" (")[0] + ": programs"] += data["counts"][name]
            totals["workers"] += 1
    print(f"`resconf check {' '.join(args)}`{' (cold caches)' if cold else ''}: exit {status}, {wall:.1f} s wall\n")
    print(table(per_backend))
    return 0


def table(per_backend: dict[str, dict[str, float]]) -> str:
    names = sorted(per_backend)
    phases = sorted({p for t in per_backend.values() for p in t if p != "workers"}, key=_order)
    lines = ["| phase (s, summed over workers) | " + " | ".join(names) + " |",
             "| --- |" + " ---: |" * len(names)]
    for p in phases:
        lines.append(f"| {p} | " + " | ".join(f"{per_backend[n].get(p, 0.0):.2f}" for n in names) + " |")
    rest = {n: per_backend[n].get("cases", 0.0) - sum(per_backend[n].get(p, 0.0) for p in INSIDE) for n in names}
    lines.append("| cases: hypothesis, the property's own code | " + " | ".join(f"{rest[n]:.2f}" for n in names)
                 + " |")
    lines.append("| workers | " + " | ".join(f"{per_backend[n]['workers']:.0f}" for n in names) + " |")
    return "\n".join(lines)


def _order(name: str) -> tuple[int, str]:
    first = ("start", "load", "collect", "cases")
    return next((i for i, f in enumerate(first) if name.startswith(f)), len(first)), name


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

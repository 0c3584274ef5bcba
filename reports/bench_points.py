"""How benchmark rows are grouped and labelled: a *point* is one (commit, date) on one machine, ordered by date.

Shared by the throughput section (the latest point of each machine), the history section (all points) and
the metadata section.
"""
from __future__ import annotations

import re
from collections import defaultdict

from .load import BenchRow

SHORT_COMMIT = 8
NO_BACKEND = "no backend (roofline bench)"  # copy and add are timed on plain NumPy / torch, not on a backend
ONE_SAMPLE = "†"  # marks a figure from one timed call (asv --quick): the throughput section explains it


def backend_label(backend: str) -> str:
    """A legend's name for a backend; rows without one read "-" in tables."""
    return NO_BACKEND if backend == "-" else backend


def point_of(row: BenchRow) -> tuple[str, str]:
    return (row.commit, row.date)


def ordered_points(rows: list[BenchRow]) -> dict[str, list[tuple[str, str]]]:
    """machine -> its points, oldest first: by date, then by first appearance (an export without dates keeps
    the order it was written in)."""
    first_seen: dict[tuple[str, tuple[str, str]], int] = {}
    for i, row in enumerate(rows):
        first_seen.setdefault((row.machine, point_of(row)), i)
    by_machine: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (machine, point), i in sorted(first_seen.items(), key=lambda item: (item[0][1][1], item[1])):
        by_machine[machine].append(point)
    return dict(sorted(by_machine.items()))


def point_label(point: tuple[str, str]) -> str:
    commit, date = point
    return " ".join(p for p in (commit[:SHORT_COMMIT], date[:10]) if p) or "-"


def short_op(op: str) -> str:
    """add_rmsnorm_forward_backward -> add_rmsnorm fwd+bwd: shorter tick labels."""
    return op.replace("_forward_backward", " fwd+bwd").replace("_forward", " fwd")


def case_order(case: str) -> tuple:
    """"512x1024" before "2048x4096": numbers compared as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", case))


def format_time(seconds: float) -> str:
    """0.0252 -> "25.2 ms": three significant digits in the largest unit that keeps the number >= 1."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_spread(row: BenchRow) -> str:
    """Half the interquartile range of the samples, relative to their median: "±2.9%"."""
    if row.quartiles is None or not row.time_s:
        return "-"
    low, high = row.quartiles
    return f"±{100 * (high - low) / 2 / row.time_s:.1f}%"


def format_samples(row: BenchRow) -> str:
    """"10", or "1 † (--quick)" for one timed call; "-" when the export does not say."""
    if row.samples is None:
        return "-"
    return f"{row.samples} {ONE_SAMPLE} (--quick)" if row.single_sample else f"{row.samples}"

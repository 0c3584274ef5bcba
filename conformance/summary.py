"""The terminal summary of a check: a property x backend matrix in 80 columns, then every unexpected failure."""
from __future__ import annotations

import textwrap
from collections import Counter, defaultdict

from resconf.backends.modes import DEFAULT_MODE
from resconf.conformance.catalogue import FAMILIES, property_order
from resconf.conformance.results import ResultRow

UNEXPECTED = ("failed", "xpassed")


WIDTH = 80  # the summary must read in an 80-column terminal or CI log without wrapping
CELL = 10  # "FAIL 12/34"; a column is CELL + 1 wide
LABEL = 12  # a backend name longer than this becomes B1, B2, ... in the header, with a key below
LEGEND = ("cells: 'ok N' N cases passed (skips aside), 'FAIL k/N' k failed, 'xf k/N' k expected failures, '-' all "
          "skipped (not claimed). RUN: the backend's run as a whole; GUARD: coverage. Families: "
          + ", ".join(f"{f.code} {f.name}" for f in FAMILIES) + " (docs/spec.md).")


def matrix(rows: list[ResultRow]) -> str:
    """Properties as rows, backends as columns; more backends than fit in 80 columns go on in another block.
    A cell: 'ok 12' all passed, 'FAIL 2/12', 'xf 1/12' expected failures, '-' all skipped."""
    cells: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for row in rows:
        cells[(row.property, column(row))][row.outcome] += 1
    backends = sorted({column(r) for r in rows})
    props = sorted({r.property for r in rows}, key=property_order)
    labels = {b: b if len(b) <= LABEL else f"B{i}" for i, b in enumerate(backends, 1)}
    width = max([len(p) for p in props] + [8])
    per_block = max(1, (WIDTH - width) // (max([CELL] + [len(v) for v in labels.values()]) + 1))
    lines = []
    for start in range(0, len(backends), per_block):
        block = backends[start:start + per_block]
        col = max([CELL] + [len(labels[b]) for b in block])
        lines.append(f"{'property':<{width}}" + "".join(f" {labels[b]:>{col}}" for b in block))
        lines += [f"{p:<{width}}" + "".join(f" {_cell(cells[(p, b)]):>{col}}" for b in block) for p in props]
        lines.append("")
    lines += [f"{label} = {b}" for b, label in labels.items() if label != b]
    lines += textwrap.wrap(LEGEND, WIDTH)
    return "\n".join(lines)


def column(row: ResultRow) -> str:
    """A matrix column: the backend, and the execution mode when not eager ("torch/compile")."""
    return row.backend if row.mode in (DEFAULT_MODE, "-") else f"{row.backend}/{row.mode}"


def _cell(counts: Counter) -> str:
    total = sum(counts.values())
    bad = sum(counts[o] for o in UNEXPECTED)
    if total == 0:
        return ""
    if bad:
        return f"FAIL {bad}/{total}"
    if counts["xfailed"]:
        return f"xf {counts['xfailed']}/{total}"
    if counts["passed"] == 0:
        return "-"
    return f"ok {counts['passed']}"


def failures(rows: list[ResultRow]) -> str:
    lines = []
    for row in sorted((r for r in rows if r.outcome in UNEXPECTED), key=lambda r: (r.backend, r.property, r.test)):
        lines.append(f"{row.outcome.upper()} {row.property} backend={row.backend} device={row.device} "
                     f"dtype={row.dtype} mode={row.mode} config={row.config}")
        lines.append(f"    {row.message}")
        if row.counterexample:
            lines.append(f"    counterexample: {row.counterexample}")
        lines.append(f"    rerun: {row.rerun}")
    return "\n".join(lines)

"""The terminal summary of a check: a backend x property matrix, then every unexpected failure."""
from __future__ import annotations

from collections import Counter, defaultdict

from resconf.conformance.results import ResultRow

UNEXPECTED = ("failed", "xpassed")


def property_sort_key(prop: str) -> tuple[str, int]:
    family, _, number = prop.partition("-")
    return family, int(number) if number.isdigit() else 0


def matrix(rows: list[ResultRow]) -> str:
    """One line per backend; a cell per property: 'ok 12' all passed, 'FAIL 2/12', 'xf 1/12', '-' all skipped."""
    cells: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for row in rows:
        cells[(row.backend, row.property)][row.outcome] += 1
    backends = sorted({r.backend for r in rows})
    props = sorted({r.property for r in rows}, key=property_sort_key)
    width = max([len(b) for b in backends] + [7])
    lines = [" " * width + " " + " ".join(f"{p:>9}" for p in props)]
    for backend in backends:
        lines.append(f"{backend:<{width}} " + " ".join(f"{_cell(cells[(backend, p)]):>9}" for p in props))
    lines.append("cells: 'ok N' N cases passed (some may be skipped), 'FAIL k/N' k failed, 'xf k/N' k expected "
                 "failures, '-' all skipped (not claimed)")
    return "\n".join(lines)


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
                     f"dtype={row.dtype} config={row.config}")
        lines.append(f"    {row.message}")
        if row.counterexample:
            lines.append(f"    counterexample: {row.counterexample[:600]}")
        lines.append(f"    rerun: {row.rerun}")
    return "\n".join(lines)

"""Section 1: the conformance matrix (backend x property family) and every failure with its rerun line."""
from __future__ import annotations

from collections import Counter

from resconf.conformance.results import OUTCOMES, ResultRow

from .document import Cell, Detail, Paragraph, Section, Table

FAMILIES = ("ID", "GR", "VG", "XB", "BI", "TP")  # the catalogue's order (docs/spec.md); unknown ones go after
SHOWN_OUTCOMES = ("passed", "failed", "xfailed", "xpassed", "skipped")  # order of the counts in a cell
assert sorted(SHOWN_OUTCOMES) == sorted(OUTCOMES)


def family(property_id: str) -> str:
    return property_id.split("-", 1)[0]


def cell_status(counts: Counter) -> str:
    """Red on any failure; amber on an expected failure (or its surprise pass); green when everything that ran
    passed (skips are a backend not claiming a feature); grey when nothing ran."""
    if counts["failed"]:
        return "fail"
    if counts["xfailed"] or counts["xpassed"]:
        return "xfail"
    if counts["passed"]:
        return "pass"
    return "skip" if counts["skipped"] else ""


def cell_text(counts: Counter) -> str:
    return ", ".join(f"{counts[o]} {o}" for o in SHOWN_OUTCOMES if counts[o]) or "-"


def matrix_table(rows: list[ResultRow]) -> Table:
    counts: dict[tuple[str, str, str], Counter] = {}
    for row in rows:
        counts.setdefault((row.backend, row.device, family(row.property)), Counter())[row.outcome] += 1
    extra = sorted({f for _, _, f in counts} - set(FAMILIES))
    families = list(FAMILIES) + extra
    subjects = sorted({(b, d) for b, d, _ in counts})
    table_rows = []
    for backend, device in subjects:
        cells = [Cell(backend), Cell(device)]
        for fam in families:
            c = counts.get((backend, device, fam), Counter())
            cells.append(Cell(cell_text(c), cell_status(c)))
        table_rows.append(tuple(cells))
    return Table("Results per backend and property family (all dtypes and runs together)",
                 ("backend", "device", *families), tuple(table_rows))


def failure_detail(row: ResultRow) -> Detail:
    fields = [("test", row.test), ("configuration", row.config)]
    if row.worst_config:
        fields.append(("drawn configuration", row.worst_config))
    if row.measured is not None and row.bound is not None:
        fields.append(("measured", f"{row.measured:.4g}, required {row.comparison} {row.bound:.4g}"))
    fields += [("message", row.message), ("counterexample", row.counterexample), ("reproduce", row.seed),
               ("run", row.run_id)]
    return Detail(f"{row.property} failed: {row.backend} on {row.device}, {row.dtype}",
                  tuple((k, v) for k, v in fields if v), row.rerun)


def summary(rows: list[ResultRow]) -> str:
    total = Counter(r.outcome for r in rows)
    runs = len({r.run_id for r in rows})
    return (f"{len(rows)} results from {runs} run{'s' * (runs != 1)}: {cell_text(total)}. "
            "A cell is green when everything that ran passed, red on any failure, amber on an expected "
            "failure (xfailed) or an unexpected pass (xpassed), grey when every case was skipped "
            "(the backend does not claim the feature).")


def matrix_section(rows: list[ResultRow]) -> Section:
    title = "1. Conformance matrix"
    if not rows:
        return Section(title, (Paragraph("No conformance results were given or readable."),))
    failed = sorted((r for r in rows if r.outcome == "failed"),
                    key=lambda r: (r.backend, r.device, r.dtype, r.property, r.config, r.test, r.run_id))
    blocks = [Paragraph(summary(rows)), matrix_table(rows)]
    if failed:
        blocks.append(Paragraph(f"{len(failed)} failure{'s' * (len(failed) != 1)}, each with the command that "
                                "reruns it:"))
        blocks.extend(failure_detail(r) for r in failed)
    else:
        blocks.append(Paragraph("No failures."))
    return Section(title, tuple(blocks))

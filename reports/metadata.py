"""Where the numbers come from: runs, versions, machines, dates, and the files read."""
from __future__ import annotations

import json
from collections import defaultdict

from resconf.conformance.results import ResultRow

from . import sections
from .bench_points import ordered_points
from .document import Cell, Paragraph, Section, Table
from .load import BenchRow, Inputs
from .runs import View


def framework_versions(rows: list[ResultRow]) -> str:
    """The union of the rows' backend_versions JSON objects, "torch 2.13.0, jax 0.10.2"; a framework seen
    with several versions lists them all."""
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        try:
            versions = json.loads(row.backend_versions or "{}")
        except json.JSONDecodeError:
            versions = {"(unparsed)": row.backend_versions}
        if isinstance(versions, dict):
            for name, version in versions.items():
                seen[str(name)].add(str(version))
    return ", ".join(f"{name} {' / '.join(sorted(v))}" for name, v in sorted(seen.items())) or "-"


def _joined(values: set[str]) -> str:
    return ", ".join(sorted(v for v in values if v)) or "-"


def span(stamps: list[str]) -> str:
    """ISO 8601 times as "2026-11-22 10:00" (UTC), a range when they differ."""
    shown = sorted({s[:16].replace("T", " ") for s in stamps if s})
    return " to ".join(dict.fromkeys((shown[0], shown[-1]))) if shown else "-"


def commit_span(commits: list[str]) -> str:
    """"a1b2c3d4" or "15, a1b2c3d4 to f00dcafe", oldest first."""
    unique = list(dict.fromkeys(c for c in commits if c))
    if len(unique) <= 1:
        return unique[0] if unique else "-"
    return f"{len(unique)}, {unique[0]} to {unique[-1]}"


def shown_text(view: View, run_id: str, subjects: set[tuple[str, str]]) -> str:
    """"all", "no", or the backends the view takes from this run (a newer run covered the others)."""
    shown = set(view.shown_subjects(run_id))
    if not shown:
        return "no"
    return "all" if shown == subjects else _joined({f"{b} ({d})" for b, d in shown})


def runs_table(rows: list[ResultRow], view: View) -> Table:
    by_run: dict[str, list[ResultRow]] = defaultdict(list)
    for row in rows:
        by_run[row.run_id].append(row)
    table_rows = []
    for run in view.runs:  # oldest first
        mine = by_run[run.run_id]
        subjects = {(r.backend, r.device) for r in mine}
        shown = shown_text(view, run.run_id, subjects)
        table_rows.append(tuple(Cell(t) for t in (
            run.run_id,
            shown,
            _joined({f"{b} ({d})" for b, d in subjects}),
            _joined({r.suite_version for r in mine}),
            _joined({r.spec_version for r in mine}),
            _joined({str(r.schema_version) for r in mine}),
            framework_versions(mine),
            _joined({r.python_version for r in mine}),
            _joined({r.machine for r in mine}),
            span([str(r.timestamp or "") for r in mine]),
            str(len(mine)),
        )))
    return Table("Conformance runs, oldest first ('shown': what section "
                 f"{sections.number(sections.MATRIX)} and the plots take from the run)",
                 ("run", "shown", "backends", "suite", "spec", "schema", "frameworks", "Python", "machine",
                  "date (UTC)", "results"), tuple(table_rows))


def provenance_table(rows: list[ResultRow], view: View) -> Table:
    """What each run checked and where. A file older than schema 2 has no provenance: "-" throughout."""
    table_rows = []
    for run in view.runs:
        mine = [r for r in rows if r.run_id == run.run_id]
        recorded = any(r.profile or r.code_commit for r in mine)
        selection = _joined({r.selection for r in mine}) if any(r.selection for r in mine) else (
            "whole suite" if recorded else "-")
        table_rows.append((Cell(run.run_id), Cell(_joined({r.profile for r in mine})), Cell(selection),
                           *(Cell(_joined({getattr(r, name) for r in mine}))
                             for name in ("shard", "code_commit", "suite_commit", "ci_job", "cpu_model", "blas",
                                          "gpu"))))
    return Table("Where each run ran", ("run", "profile", "selection", "shard", "code commit", "resconf commit",
                                        "CI job", "CPU", "BLAS", "GPU"), tuple(table_rows))


def bench_table(rows: list[BenchRow]) -> Table:
    by_machine: dict[str, list[BenchRow]] = defaultdict(list)
    for row in rows:
        by_machine[row.machine].append(row)
    points = ordered_points(rows)
    table_rows = []
    for machine, mine in sorted(by_machine.items()):
        table_rows.append(tuple(Cell(t) for t in (
            machine or "-", _joined({r.device for r in mine}), commit_span([c for c, _ in points[machine]]),
            span([r.date for r in mine]), str(len(mine)))))
    return Table("Benchmark runs", ("machine", "devices", "commits", "date", "timed cases"), tuple(table_rows))


def metadata_section(inputs: Inputs, view: View) -> Section:
    blocks: list = []
    if inputs.results:
        results = list(inputs.results)
        blocks += [Paragraph(view.how), runs_table(results, view), provenance_table(results, view)]
    if inputs.bench:
        blocks.append(bench_table(list(inputs.bench)))
    blocks.append(Table("Input files", ("file", "status"),
                        tuple((Cell(p), Cell("read")) for p in inputs.sources)
                        + tuple((Cell(u.path), Cell(f"unreadable: {u.reason}", "fail")) for u in inputs.unreadable)))
    if not inputs.results and not inputs.bench:
        blocks.insert(0, Paragraph("Nothing could be read."))
    return Section(sections.title(sections.METADATA), tuple(blocks))

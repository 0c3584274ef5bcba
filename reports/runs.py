"""Which conformance runs the report shows.

By default the latest view: for each backend and device, the rows of the newest whole-suite run that covered
it, with every newer subset run (`-k`/`-m`: its `selection`) laid over it case by case. An old failure fixed
since does not stay red, backends checked in separate runs all still show, and a quick `-k` rerun does not
hide the coverage of the full run before it. `--run` picks runs by id; `--all-runs` adds every run together.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from resconf.conformance.results import ResultRow

Subject = tuple[str, str]  # (backend, device)
EPOCH = datetime.min.replace(tzinfo=timezone.utc)  # a run without a readable timestamp sorts oldest


@dataclass(frozen=True)
class RunSelection:
    """What the command line asked for: run ids (`--run`, repeatable), or every run (`--all-runs`)."""

    run_ids: tuple[str, ...] = ()
    all_runs: bool = False

    def __post_init__(self) -> None:
        if self.run_ids and self.all_runs:
            raise ValueError("give --run RUN_ID or --all-runs, not both")


class UnknownRun(ValueError):
    """A --run that names no run among the inputs."""


@dataclass(frozen=True)
class Run:
    run_id: str
    started: str  # the earliest timestamp of its rows, ISO 8601 ("" when none)
    subjects: tuple[Subject, ...]


@dataclass(frozen=True)
class View:
    rows: tuple[ResultRow, ...]  # the rows every section reads
    runs: tuple[Run, ...]  # every run in the inputs, oldest first
    shown: tuple[tuple[str, Subject], ...]  # (run id, subject) pairs the view takes rows from
    how: str  # one sentence: which runs are shown and why

    def shown_subjects(self, run_id: str) -> list[Subject]:
        return [s for r, s in self.shown if r == run_id]


def _instant(stamp: object) -> datetime:
    if isinstance(stamp, datetime):
        moment = stamp
    else:
        try:
            moment = datetime.fromisoformat(str(stamp))
        except ValueError:
            return EPOCH
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def runs_of(rows: list[ResultRow]) -> list[Run]:
    """Every run, oldest first: by its first timestamp (ISO strings compared as instants), then by id."""
    stamps: dict[str, list[datetime]] = {}
    subjects: dict[str, set[Subject]] = {}
    texts: dict[str, dict[datetime, str]] = {}
    for row in rows:
        moment = _instant(row.timestamp)
        stamps.setdefault(row.run_id, []).append(moment)
        texts.setdefault(row.run_id, {}).setdefault(moment, str(row.timestamp or ""))
        subjects.setdefault(row.run_id, set()).add((row.backend, row.device))
    order = sorted(stamps, key=lambda run_id: (min(stamps[run_id]), run_id))
    return [Run(r, texts[r][min(stamps[r])], tuple(sorted(subjects[r]))) for r in order]


def _subjects_text(subjects: list[Subject]) -> str:
    by_device: dict[str, list[str]] = {}
    for backend, device in sorted(subjects):
        by_device.setdefault(device, []).append(backend)
    return "; ".join(f"{', '.join(b)} on {d}" for d, b in sorted(by_device.items()))


def _when(run: Run) -> str:
    return f" ({run.started[:16].replace('T', ' ')})" if run.started else ""


def _subset_note(rows: list[ResultRow]) -> str:
    """Runs limited by -k/-m say so: their rows may cover only part of what the backend claims."""
    chosen = sorted({(r.run_id, r.selection) for r in rows if r.selection})
    return "".join(f" {run_id} was limited to a subset: {selection}." for run_id, selection in chosen)


Case = tuple[str, str, str, str, str, str]  # (backend, device, dtype, property, test, config)


def case_of(row: ResultRow) -> Case:
    return (row.backend, row.device, row.dtype, row.property, row.test, row.config)


def layers(rows: list[ResultRow], runs: list[Run]) -> dict[Subject, list[str]]:
    """Per subject, oldest first: its newest whole-suite run, then every subset run newer than it (all its
    subset runs when no whole-suite run covered it)."""
    subsets = {r.run_id for r in rows if r.selection}
    base: dict[Subject, str] = {}
    for run in runs:  # oldest first: a later whole-suite run replaces an earlier one
        for subject in run.subjects:
            if run.run_id not in subsets:
                base[subject] = run.run_id
    order = {run.run_id: i for i, run in enumerate(runs)}
    stacked: dict[Subject, list[str]] = {}
    for run in runs:
        for subject in run.subjects:
            first = base.get(subject)
            if run.run_id == first or (run.run_id in subsets and (first is None or order[run.run_id] > order[first])):
                stacked.setdefault(subject, []).append(run.run_id)
    return stacked


def newest_per_case(rows: list[ResultRow], stacked: dict[Subject, list[str]]) -> list[ResultRow]:
    """The rows of each case's newest run among its subject's layers: a subset run replaces only the cases
    it ran."""
    rank = {(subject, run_id): i for subject, runs in stacked.items() for i, run_id in enumerate(runs)}
    winner: dict[Case, int] = {}
    for row in rows:
        i = rank.get(((row.backend, row.device), row.run_id))
        if i is not None and i >= winner.get(case_of(row), -1):
            winner[case_of(row)] = i
    return [r for r in rows if rank.get(((r.backend, r.device), r.run_id), -2) == winner.get(case_of(r))]


def latest(rows: list[ResultRow], runs: list[Run]) -> tuple[list[tuple[str, Subject]], list[ResultRow], str]:
    stacked = layers(rows, runs)
    shown = sorted((run_id, subject) for subject, run_ids in stacked.items() for run_id in run_ids)
    kept = newest_per_case(rows, stacked)
    cases = {run_id: len({case_of(r) for r in kept if r.run_id == run_id}) for run_id, _ in shown}
    subsets = {r.run_id for r in rows if r.selection}
    parts = [f"{_subjects_text([s for r, s in shown if r == run.run_id])} from {run.run_id}{_when(run)}"
             + (f" (a subset: the {cases[run.run_id]} case{'s' * (cases[run.run_id] != 1)} it ran)"
                if run.run_id in subsets else "")
             for run in runs if any(r == run.run_id for r, _ in shown)]
    hidden = [run.run_id for run in runs if not any(r == run.run_id for r, _ in shown)]
    how = ("Showing, for each backend and device, its newest whole-suite run with any newer subset run (-k/-m) "
           "laid over it case by case: " + "; ".join(parts) + ".")
    if hidden:
        how += (f" {len(hidden)} older run{'s' * (len(hidden) != 1)} not shown ({', '.join(hidden)}): "
                "give --run RUN_ID to pick runs, or --all-runs to add every run together.")
    return shown, kept, how


def select(rows: list[ResultRow], selection: RunSelection = RunSelection()) -> View:
    runs = runs_of(rows)
    known = {run.run_id for run in runs}
    missing = [r for r in selection.run_ids if r not in known]
    if missing:
        raise UnknownRun(f"--run {', '.join(missing)}: no such run among the inputs; the runs found are: "
                         f"{', '.join(run.run_id for run in runs) or 'none'}")
    if selection.all_runs or selection.run_ids:
        picked = [run for run in runs if selection.all_runs or run.run_id in selection.run_ids]
        shown = [(run.run_id, s) for run in picked for s in run.subjects]
        how = ("Showing every run added together (--all-runs)" if selection.all_runs
               else "Showing the runs chosen with --run") + ": " + "; ".join(
            f"{run.run_id}{_when(run)}" for run in picked) + "."
        keep = set(shown)
        chosen = [r for r in rows if (r.run_id, (r.backend, r.device)) in keep]
    else:
        shown, chosen, how = latest(rows, runs)
    return View(tuple(chosen), tuple(runs), tuple(shown), how + _subset_note(chosen))

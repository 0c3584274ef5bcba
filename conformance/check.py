"""`resconf check`: run the suite in worker processes, one or more per backend, and merge the results.

A process per backend isolates them: one that crashes, hangs or kills its interpreter loses only its own
rows, and the others' results are still written. The worker reports which case it is running
(conformance/guard.py), so the case that killed it gets a failed row of its own, and the worker is
restarted without the cases already done (conformance/backend_part.py). With -n N, up to N workers run
at once, and each backend is split into N deterministic parts (conformance/shards.py) so that one slow
backend does not leave cores idle. Rows stream to a JSON-lines file, so a killed worker keeps every
finished case; the merged table is written atomically. Guards fail a run that covered less than the
backend claims, or tested nothing.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from resconf.backends.registry import BUILTIN, entry_point_names, known_names
from resconf.conformance import gate, guard, profiles, provenance, shards, summary, worker, xfails
from resconf.conformance.backend_part import NOTHING_RAN, PartRun, run_part
from resconf.conformance.harness_rows import as_backend, harness_row
from resconf.conformance.interrupt import Interrupt
from resconf.conformance.junit import JunitPart, merge_junit
from resconf.conformance.options import CheckOptions
from resconf.conformance.outputs import SUMMARY_HEADER, keep_rows, not_ours, unwritable, write_text_atomic
from resconf.conformance.progress import Progress
from resconf.conformance.results import COVERAGE_KEY, ResultRow, to_table, write_parquet_atomic
from resconf.conformance.home import HOME


@dataclass(frozen=True)
class BackendRun:
    """One backend's outcome, its parts joined and the guards applied."""

    rows: tuple[ResultRow, ...]
    junit: tuple[JunitPart, ...]
    notes: tuple[str, ...]  # crashes, restarts, guard warnings: printed in the summary
    load_error: str | None = None
    logs: tuple[Path, ...] = ()
    coverage: dict | None = None  # what the whole suite covers for it: `resconf merge` checks shards against it
    backend: str = ""  # its own name (its rows' backend), where a worker loaded it
    gated_out: int = 0  # cases the gate left out (conformance/gate.py)


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run, decided without importing any framework; None if it may run."""
    if name in BUILTIN:
        missing = [m for m in BUILTIN[name].requires if importlib.util.find_spec(m) is None]
        if missing:
            return (f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
                    f"installed backends: {', '.join(known_names())}")
        return None
    if name in entry_point_names() or ":" in name:
        return None
    return f"unknown backend {name!r}; installed backends: {', '.join(known_names())} (or give package.module:attr)"


def unknown_backend(names: tuple[str, ...]) -> str | None:
    """A name that is no built-in, entry point or package.module:attr: a typo, refused before any work
    (a row for it would stay red in every later report)."""
    for name in names:
        if name in BUILTIN or name in entry_point_names() or ":" in name:
            continue
        close = difflib.get_close_matches(name, [*BUILTIN, *entry_point_names()], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return (f"unknown backend {name!r}; {hint}installed: {', '.join(known_names())} "
                f"(or give package.module:attr)")
    return None


def default_output(run_id: str) -> Path:
    """Under .resconf/ (conformance/home.py), as .pytest_cache: a dot-folder is no package to setuptools'
    discovery, so the user's `pip install -e .` of a flat-layout project still works."""
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return HOME / "results" / f"date={day}" / f"run-{run_id}.parquet"


def summary_path(output: Path) -> Path:
    """The text summary beside the results: `_run-X.summary.txt`. Dataset readers (pyarrow, pandas, DuckDB
    globs of *.parquet) skip names starting with '_' or '.', so the folder still reads as one dataset."""
    return output.with_name(f"_{output.stem}.summary.txt")


def logs_path(output: Path) -> Path:
    """Where the worker logs of a backend that failed are kept: `_run-X.logs/` beside the results."""
    return output.with_name(f"_{output.stem}.logs")


def parts_per_backend(opts: CheckOptions) -> int:
    """With -n N each backend runs in N parts; an external --shard is not split again."""
    return 1 if opts.shard or opts.workers <= 1 else opts.workers


def run_check(opts: CheckOptions) -> int:
    """0: nothing unexpected; 1: a failure, or nothing ran on a required device, or the results could not be
    written; 2: refused before any work (bad input, an output it cannot or must not write), nothing written."""
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    output = opts.output or default_output(run_id)
    if typo := unknown_backend(opts.backends):
        print(f"resconf: {typo}", file=sys.stderr)
        return 2
    if not opts.skip_xfails:
        try:  # a malformed expected-failure file is the user's to fix: one line, before any work
            xfails.load(list(opts.backends), list(opts.xfails))
        except pytest.UsageError as exc:
            print(f"resconf: {exc}", file=sys.stderr)
            return 2
    if refusal := _output_refusal(opts, output):
        print(f"resconf: {refusal}", file=sys.stderr)
        return 2
    problems = {name: reason for name in opts.backends if (reason := unavailable_reason(name))}
    for reason in problems.values():
        print(f"resconf: {reason}", file=sys.stderr)
    names = [n for n in dict.fromkeys(opts.backends) if n not in problems]  # a name given twice runs once
    # worker files: rows, events, JUnit, logs; on SIGINT/SIGTERM the workers are killed, what finished is
    # written and the folder removed (conformance/interrupt.py)
    with tempfile.TemporaryDirectory(prefix="resconf-") as tmp, Interrupt().catching() as stop:
        runs = _run_backends(names, opts, run_id, Path(tmp), stop)
        for name, run in runs.items():
            if run.load_error:
                problems[name] = run.load_error
                print(f"resconf: {run.load_error}", file=sys.stderr)
        found = provenance.run_provenance(Path.cwd(), opts.device, opts.profile, shlex.join(opts.pytest_args),
                                          opts.shard or "")
        rows = [row for run in runs.values() for row in run.rows]
        rows += [harness_row(name, opts, run_id, "RUN", f"did not run: {reason}") for name, reason in problems.items()]
        rows = [dataclasses.replace(row, **found) for row in rows]
        coverage = {run.backend or name: run.coverage for name, run in runs.items() if run.coverage}
        lost = []  # a write that failed at the end (a full disk): said in one line each, never a traceback
        try:
            write_parquet_atomic(to_table(rows), output, {COVERAGE_KEY: json.dumps(coverage, sort_keys=True)})
        except OSError as exc:
            lost.append(f"cannot write {output}: {exc.strerror or exc}; {keep_rows(r.to_json() for r in rows)}")
        try:
            if opts.junitxml:
                own = JunitPart(None, tuple(r for r in rows if r.backend in problems))
                merge_junit([*(part for run in runs.values() for part in run.junit), own], opts.junitxml)
            kept = _keep_failed_logs(runs, output)
        except OSError as exc:
            lost.append(f"cannot write {exc.filename or opts.junitxml}: {exc.strerror or exc}")
            kept = []
    if opts.store_durations and not lost:
        shards.store_durations(opts.durations_file or shards.DURATIONS_FILE,
                               {shards.duration_key(r.test): r.duration_s for r in rows if r.test != "-"
                                and r.duration_s > 0})  # a case that died or never ran has no duration
    notes = [note for run in runs.values() for note in run.notes] + kept
    text = _summary_text(rows, notes, output, shrunk=opts.shrink or opts.profile in profiles.SHRINKING,
                         gated=(sum(run.gated_out for run in runs.values()),
                                gate.strength(opts.cover, opts.profile)))
    try:
        write_text_atomic(summary_path(output), f"{SUMMARY_HEADER}, run {run_id}\n{text}\n")
    except OSError as exc:
        lost.append(f"cannot write {summary_path(output)}: {exc.strerror or exc}")
    print(text)
    for line in lost:
        print(f"resconf: {line}", file=sys.stderr)
    off = opts.require_device and _off_device(runs)
    if off:
        print(f"resconf: --device {opts.device}: no backend ran on the device: {off} (--no-require-device "
              f"accepts that)", file=sys.stderr)
    unexpected = [r for r in rows if r.outcome in summary.UNEXPECTED]
    return stop.exit_status if stop.signum else 1 if unexpected or off or lost else 0


def _output_refusal(opts: CheckOptions, output: Path) -> str | None:
    """Why the run must not start: an output it could not write at the end, or one that would replace a
    file resconf did not write (docs/results.md)."""
    given = [(output, "--output" if opts.output else "results file"), (opts.junitxml, "--junitxml")]
    if opts.store_durations:
        given.append((opts.durations_file or shards.DURATIONS_FILE, "durations file"))
    for path, what in given:
        if path and (problem := unwritable(path, what)):
            return problem
    return not_ours(output, summary_path(output))


def _off_device(runs: dict[str, BackendRun]) -> str | None:
    """Why nothing ran on the device asked for: each backend's reason for skipping it; None when one ran."""
    skips = {name: run.rows[0].message.removeprefix("skipped: ") for name, run in runs.items()
             if run.rows and all(r.property == "RUN" and r.outcome == "skipped" for r in run.rows)}
    if not skips or any(run.rows and name not in skips for name, run in runs.items()):
        return None
    return "; ".join(f"{name}: {reason}" for name, reason in skips.items())


def _run_backends(names: list[str], opts: CheckOptions, run_id: str, tmp: Path, stop: Interrupt
                  ) -> dict[str, BackendRun]:
    """Every backend's parts on a pool of opts.workers threads, each watching one worker process; the
    backends expected to take longest start first. Once `stop` is set no part starts."""
    count = parts_per_backend(opts)
    durations = shards.load_durations(opts.durations_file or shards.DURATIONS_FILE)
    units = [(name, k) for name in sorted(names, key=lambda n: -_expected_s(n, durations)) for k in range(count)]
    label_of = {(name, k): name if count == 1 else f"{name} {k + 1}/{count}" for name, k in units}
    with Progress(expect=list(label_of.values())) as progress, \
            ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
        def run(name: str, k: int) -> PartRun:
            label = label_of[(name, k)]
            if stop.signum:
                row = harness_row(name, opts, run_id, "RUN", f"not run: the check was interrupted ({stop.name}) "
                                  "before this backend started")
                return PartRun((row,), (JunitPart(None, (row,)),), ())
            progress.worker(label).started = True
            progress.say(f"resconf: checking backend {label} on {opts.device} (profile {opts.profile}) ...")
            started = time.monotonic()
            workdir = tmp / f"{names.index(name)}.{k}"
            workdir.mkdir()
            shard = opts.shard or (f"{k + 1}/{count}" if count > 1 else None)
            part = run_part(name, opts, run_id, workdir, shard, progress.worker(label), progress.say, stop)
            progress.worker(label).finished = True
            progress.say(f"resconf: backend {label}: {len(part.rows)} rows in {time.monotonic() - started:.1f} s")
            return part

        futures = {unit: pool.submit(run, *unit) for unit in units}
        parts = {unit: future.result() for unit, future in futures.items()}
    return {name: _join(name, opts, run_id, [parts[(name, k)] for k in range(count)]) for name in names}


def _expected_s(name: str, durations: dict[str, float]) -> float:
    short = name.rsplit(":", 1)[-1]
    return sum(s for key, s in durations.items() if f"[{short}-" in key)


def _join(name: str, opts: CheckOptions, run_id: str, parts: list[PartRun]) -> BackendRun:
    """A backend's parts as one run: their rows, and the guards judged on the union of what they selected."""
    load_error = next((p.load_error for p in parts if p.load_error), None)
    logs = tuple(log for p in parts for log in p.logs)
    if load_error:
        return BackendRun((), (), (), load_error=load_error, logs=logs)
    if all(not p.manifest and [r.outcome for r in p.rows] == ["skipped"] for p in parts):
        parts = parts[:1]  # every part skipped the device for the same reason: say it once
    rows = _once([r for p in parts for r in p.rows])
    notes = list(dict.fromkeys(n for p in parts for n in p.notes))
    junit = [j for p in parts for j in p.junit if j.xml is not None]
    junit.append(JunitPart(None, tuple(_once([r for p in parts for j in p.junit if j.xml is None for r in j.rows]))))
    manifests = [p.manifest for p in parts if p.manifest is not None]
    coverage = None
    if manifests:
        manifest = dataclasses.replace(manifests[0], selected=frozenset().union(*(m.selected for m in manifests)))
        if len(parts) > 1 and not manifest.selected:  # each part was empty: the run as a whole selected nothing
            rows.append(harness_row(name, opts, run_id, "RUN", worker.PYTEST_STATUS[NOTHING_RAN]))
        coverage = guard.expected_coverage(manifest)
        if opts.shard:  # the other shards run the cases this one did not select: only its own are judged here
            manifest = dataclasses.replace(manifest, cases=tuple(c for c in manifest.cases
                                                                  if c.test in manifest.selected))
        if all(p.guardable for p in parts):
            guard_rows, guard_notes = _guard(name, opts, run_id, manifest, rows)
            rows += guard_rows
            notes += guard_notes
            junit.append(JunitPart(None, tuple(guard_rows)))
    own = next((p.backend for p in parts if p.backend), name)  # rows are keyed by the backend's own name
    gated_out = manifests[0].gated_out if manifests else 0
    return as_backend(BackendRun(tuple(rows), tuple(junit), tuple(notes), logs=logs, coverage=coverage,
                                 backend=own, gated_out=gated_out), name, own)


def _once(rows: list[ResultRow]) -> list[ResultRow]:
    """Rows about the run as a whole (no node id) that several parts wrote alike (a usage error each
    part hit at collection), once."""
    seen: set[tuple] = set()
    kept = []
    for row in rows:
        key = (row.property, row.config, row.message, row.outcome)
        if row.test == "-" and key in seen:
            continue
        seen.add(key)
        kept.append(row)
    return kept


def _guard(name: str, opts: CheckOptions, run_id: str, manifest: guard.Manifest, rows: list[ResultRow]
           ) -> tuple[list[ResultRow], list[str]]:
    """GUARD rows for a module skipped whole, a (property, claimed dtype) with no row, a run that tested
    nothing. With -k/-m the user chose a subset: missing coverage is then a warning, not a failure."""
    out, notes = [], []
    for module, reason in manifest.skipped_modules:
        out.append(harness_row(name, opts, run_id, "GUARD", f"{module} was skipped whole at collection, so its "
                               f"properties were not checked: {reason}", config=f"module={module}"))
    gaps = guard.coverage_gaps(manifest, rows)
    if gaps and manifest.filtered:
        notes.append(f"backend {name}: warning: -k/-m chose a subset: {len(gaps)} properties have no result in "
                     f"some claimed dtype (a run without -k/-m fails on that)")
    elif gaps:
        out += [harness_row(name, opts, run_id, "GUARD", gap.describe(), config=f"covers={gap.property}",
                            dtype=gap.dtypes[0] if len(gap.dtypes) == 1 else "-",
                            mode=gap.modes[0] if len(gap.modes) == 1 else "-") for gap in gaps]
    nothing = guard.tested_nothing(rows)
    if nothing:
        out.append(harness_row(name, opts, run_id, "GUARD", nothing, config="covers=*"))
    return out, notes


def _keep_failed_logs(runs: dict[str, BackendRun], output: Path) -> list[str]:
    """Copy the worker logs of every backend with an unexpected result next to the results (the temporary
    folder they were written in is deleted with the run)."""
    notes = []
    for name, run in runs.items():
        if not run.load_error and not any(r.outcome in summary.UNEXPECTED for r in run.rows):
            continue
        folder = logs_path(output)
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        for log in run.logs:
            if log.exists():
                shutil.copyfile(log, folder / f"{safe}.{log.parent.name}.{log.name}")
        notes.append(f"backend {name}: worker logs kept in {folder}")
    return notes


def _summary_text(rows: list[ResultRow], notes: list[str], output: Path, shrunk: bool = True,
                  gated: tuple[int, str] = (0, "")) -> str:
    outcomes = {o: sum(r.outcome == o for r in rows) for o in ("passed", "failed", "skipped", "xfailed", "xpassed")}
    parts = [summary.matrix(rows), ""]
    if notes:
        parts += ["Workers:", *(f"  {note}" for note in notes), ""]
    fails = summary.failures(rows)
    if fails:
        parts += ["Unexpected results:", fails, ""]
        if not shrunk:
            parts += ["Each counterexample is the first failing example, not shrunk: add --shrink to its rerun line "
                      "for a minimal one.", ""]
    parts.append("cases: " + ", ".join(f"{v} {k}" for k, v in outcomes.items()))
    if gated[0]:
        parts.append(f"gate:  {gated[0]} more cases left out by --cover {gated[1]}: {gate.MEANING[gated[1]]} ran "
                     "(--cover all runs every one; docs/scaling.md)")
    parts.append(f"results: {output}")
    parts.append(f"report:  resconf report {output} --out .resconf/report")
    return "\n".join(parts)

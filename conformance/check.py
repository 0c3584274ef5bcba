"""`resconf check`: run the suite once per backend, each in its own pytest process, and merge the results.

A process per backend isolates them: one that crashes, hangs or kills its interpreter loses only its own
rows, and the others' results are still written. The worker reports which case it is running
(conformance/guard.py), so the case that killed it gets a failed row of its own, and the worker is
restarted without the cases already done. A case that outlives the per-test timeout by a margin is
taken as hung where no signal can reach it: its worker is killed and resumed the same way. Rows
stream to a JSON-lines file, so a killed worker keeps every finished case; the merged table is written
atomically. Guards fail a run that covered less than the backend claims, or tested nothing.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from resconf.backends.registry import BUILTIN, entry_point_names, known_names
from resconf.conformance import guard, provenance, summary, worker, xfails
from resconf.conformance.guard import Case
from resconf.conformance.junit import JunitPart, merge_junit
from resconf.conformance.options import CheckOptions
from resconf.conformance.plugin import WORKER_LOAD_FAILED, WORKER_NO_DEVICE
from resconf.conformance.results import ResultRow, rows_from_jsonl, to_table, write_parquet_atomic

MAX_RESTARTS = 3  # a backend that kills its worker again and again is given up on, not retried forever


@dataclass(frozen=True)
class BackendRun:
    """One backend's outcome: its rows (the worker's and the supervisor's own) and what went wrong."""

    rows: tuple[ResultRow, ...]
    junit: tuple[JunitPart, ...]
    notes: tuple[str, ...]  # crashes, restarts, guard warnings: printed in the summary
    load_error: str | None = None


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


def default_output(run_id: str) -> Path:
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return Path("reports") / "results" / f"date={day}" / f"run-{run_id}.parquet"


def summary_path(output: Path) -> Path:
    """The text summary beside the results: `_run-X.summary.txt`. Dataset readers (pyarrow, pandas, DuckDB
    globs of *.parquet) skip names starting with '_' or '.', so the folder still reads as one dataset."""
    return output.with_name(f"_{output.stem}.summary.txt")


def run_check(opts: CheckOptions) -> int:
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    output = opts.output or default_output(run_id)
    if not opts.skip_xfails:
        try:  # a malformed expected-failure file is the user's to fix: one line, before any work
            xfails.load(list(opts.backends), list(opts.xfails))
        except pytest.UsageError as exc:
            print(f"resconf: {exc}", file=sys.stderr)
            return 2
    problems = {name: reason for name in opts.backends if (reason := unavailable_reason(name))}
    for reason in problems.values():
        print(f"resconf: {reason}", file=sys.stderr)
    rows: list[ResultRow] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="resconf-") as tmp:
        junit_parts: list[JunitPart] = []
        for index, name in enumerate(n for n in opts.backends if n not in problems):
            started = time.monotonic()
            print(f"resconf: checking backend {name} on {opts.device} (profile {opts.profile}) ...", flush=True)
            workdir = Path(tmp) / str(index)
            workdir.mkdir()
            run = _check_backend(name, opts, run_id, workdir)
            rows += run.rows
            notes += run.notes
            junit_parts += run.junit
            if run.load_error:
                problems[name] = run.load_error
                print(f"resconf: {run.load_error}", file=sys.stderr)
            print(f"resconf: backend {name}: {len(run.rows)} rows in {time.monotonic() - started:.1f} s", flush=True)
        for name, reason in problems.items():
            rows.append(_harness_row(name, opts, run_id, "RUN", f"did not run: {reason}"))
        found = provenance.run_provenance(Path.cwd(), opts.device, opts.profile, shlex.join(opts.pytest_args))
        rows = [dataclasses.replace(row, **found) for row in rows]
        write_parquet_atomic(to_table(rows), output)
        if opts.junitxml:
            problems_part = JunitPart(None, tuple(r for r in rows if r.backend in problems))
            merge_junit([*junit_parts, problems_part], opts.junitxml)
    text = _summary_text(rows, notes, output)
    _write_text_atomic(summary_path(output), text)
    print(text)
    unexpected = [r for r in rows if r.outcome in summary.UNEXPECTED]
    return 1 if unexpected else 0


def _check_backend(name: str, opts: CheckOptions, run_id: str, workdir: Path) -> BackendRun:
    """Run one backend's worker; after a crash or hang, record the case it died in and resume without
    the cases already run (at most MAX_RESTARTS times); then apply the guards."""
    deadline = time.monotonic() + opts.worker_timeout_s
    worker_rows: list[ResultRow] = []
    own: list[ResultRow] = []  # rows the supervisor writes: dead cases, RUN and GUARD
    notes: list[str] = []
    junits: list[JunitPart] = []
    manifest: guard.Manifest | None = None
    done: set[str] = set()
    dead: set[str] = set()
    ended_in_order = False
    for attempt in range(MAX_RESTARTS + 1):
        rows_path, events, junit, already = (workdir / f"{attempt}.{ext}"
                                             for ext in ("rows.jsonl", "events.jsonl", "xml", "done"))
        if attempt:
            already.write_text("".join(f"{test}\n" for test in sorted(done | dead)))
        cmd = worker.worker_command(name, opts, run_id, rows_path, events, junit, already if attempt else None)
        exit = worker.run_worker(cmd, workdir / f"{attempt}.log", events, deadline, opts.hung_after_s)
        got = rows_from_jsonl(rows_path)
        worker_rows += got
        junits.append(JunitPart(junit, tuple(got)))
        done = {r.test for r in worker_rows}
        log = guard.read_events(events)
        manifest = manifest or log.manifest
        if attempt == 0 and exit.status == WORKER_LOAD_FAILED and log.manifest is None:
            return BackendRun((), (), (), load_error=_exit_message(exit.tail) or f"backend {name!r} failed to load")
        if attempt == 0 and exit.status == WORKER_NO_DEVICE and log.manifest is None:
            reason = _exit_message(exit.tail).removeprefix("resconf: ")
            row = dataclasses.replace(_harness_row(name, opts, run_id, "RUN", reason), outcome="skipped")
            return BackendRun((row,), (JunitPart(None, (row,)),), (f"backend {name} {reason}",))
        if log.finished_status is not None and exit.killed_for is None:  # the session ended in order
            ended_in_order = exit.status in (0, 1)
            if not ended_in_order:
                own.append(_harness_row(name, opts, run_id, "RUN", worker.pytest_failure(exit)))
            break
        row, note = _death(name, opts, run_id, exit, log, done)
        own.append(row)
        dead.add(row.test)  # "-" when it died between cases: no node id, so leaving it out is harmless
        notes.append(note)
        print(f"resconf: {note}", flush=True)
        left = manifest.selected - done - dead if manifest else set()
        if exit.killed_for == "worker timeout" or not left:
            break
        if attempt == MAX_RESTARTS:
            own.append(_harness_row(name, opts, run_id, "RUN", f"gave up after {MAX_RESTARTS} restarts of the "
                                    f"worker: {len(left)} selected cases never ran"))
            break
        notes.append(f"backend {name}: worker restarted without the {len(done | dead)} cases already run "
                     f"({len(left)} left)")
        print(f"resconf: {notes[-1]}", flush=True)
    if manifest is not None and (ended_in_order or dead):
        guard_rows, guard_notes = _guard(name, opts, run_id, manifest, worker_rows + own)
        own += guard_rows
        notes += guard_notes
    return BackendRun(tuple(worker_rows + own), (*junits, JunitPart(None, tuple(own))), tuple(notes))


def _death(name: str, opts: CheckOptions, run_id: str, exit: worker.WorkerExit, log: guard.WorkerLog, done: set[str]
           ) -> tuple[ResultRow, str]:
    """The failed row and summary note for a worker that died or was killed: the case it was running
    when it did (started, no result), or a RUN row if it was between cases."""
    how = worker.how_it_died(exit, opts)
    culprit = next((c for c in reversed(log.started) if c.test not in done and c.test not in log.ended), None)
    if culprit is None:
        row = _harness_row(name, opts, run_id, "RUN", f"{how} between cases: {_last_line(exit.tail)}")
        return row, f"backend {name}: {how} outside any case"
    row = _case_row(culprit, name, opts, run_id, f"{how} while running {_short(culprit.test)}")
    return row, f"backend {name}: {how} in {culprit.test}"


def _guard(name: str, opts: CheckOptions, run_id: str, manifest: guard.Manifest, rows: list[ResultRow]
           ) -> tuple[list[ResultRow], list[str]]:
    """GUARD rows for a module skipped whole, a (property, claimed dtype) with no row, a run that tested
    nothing. With -k/-m the user chose a subset: missing coverage is then a warning, not a failure."""
    out, notes = [], []
    for module, reason in manifest.skipped_modules:
        out.append(_harness_row(name, opts, run_id, "GUARD", f"{module} was skipped whole at collection, so its "
                                f"properties were not checked: {reason}", config=f"module={module}"))
    gaps = guard.coverage_gaps(manifest, rows)
    if gaps and manifest.filtered:
        notes.append(f"backend {name}: warning: -k/-m chose a subset: {len(gaps)} properties have no result in "
                     f"some claimed dtype (a run without -k/-m fails on that)")
    elif gaps:
        out += [_harness_row(name, opts, run_id, "GUARD", gap.describe(), config=f"covers={gap.property}",
                             dtype=gap.dtypes[0] if len(gap.dtypes) == 1 else "-") for gap in gaps]
    nothing = guard.tested_nothing(rows)
    if nothing:
        out.append(_harness_row(name, opts, run_id, "GUARD", nothing, config="covers=*"))
    return out, notes


def _short(test: str) -> str:
    return test.rsplit("::", 1)[-1]


def _exit_message(tail: str) -> str:
    """The message a worker ended with through pytest.exit (pytest frames it as '! ..Exit: MESSAGE !')."""
    line = _last_line(tail) if tail.strip() else ""
    return line.removeprefix("! _pytest.outcomes.Exit: ").removesuffix(" !")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _harness_row(name: str, opts: CheckOptions, run_id: str, prop: str, message: str, *, dtype: str = "-",
                 config: str = "-") -> ResultRow:
    """A failed row about the backend's run as a whole (RUN: it could not run; GUARD: it covered too little)."""
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype=dtype, property=prop, test="-",
                     config=config, outcome="failed", measured=None, bound=None, comparison="", worst_config="",
                     counterexample="", message=message,
                     rerun=f"resconf check --backend {name} --device {opts.device} --profile {opts.profile}",
                     seed="", examples=0, duration_s=0.0, timestamp=_now())


def _case_row(case: Case, name: str, opts: CheckOptions, run_id: str, message: str) -> ResultRow:
    """A failed row for the case a worker died or hung in, as the worker would have written it."""
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype=case.dtype, property=case.property,
                     test=case.test, config=case.config, outcome="failed", measured=None, bound=None,
                     comparison="", worst_config="", counterexample="", message=message, rerun=case.rerun,
                     seed="", examples=0, duration_s=0.0, timestamp=_now())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _summary_text(rows: list[ResultRow], notes: list[str], output: Path) -> str:
    outcomes = {o: sum(r.outcome == o for r in rows) for o in ("passed", "failed", "skipped", "xfailed", "xpassed")}
    parts = [summary.matrix(rows), ""]
    if notes:
        parts += ["Workers:", *(f"  {note}" for note in notes), ""]
    fails = summary.failures(rows)
    if fails:
        parts += ["Unexpected results:", fails, ""]
    parts.append("cases: " + ", ".join(f"{v} {k}" for k, v in outcomes.items()))
    parts.append(f"results: {output}")
    parts.append(f"report:  resconf report {output} --out reports/out")
    return "\n".join(parts)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)

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

import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backends.registry import BUILTIN, entry_point_names, known_names
from conformance import guard, summary, xfails
from conformance.guard import Case
from conformance.plugin import WORKER_LOAD_FAILED
from conformance.results import ResultRow, rows_from_jsonl, to_table, write_parquet_atomic

SUITE_DIR = Path(__file__).parent
MAX_RESTARTS = 3  # a backend that kills its worker again and again is given up on, not retried forever
POLL_S = 0.2  # how often the supervisor looks at a running worker
PYTEST_STATUS = {2: "pytest was interrupted (errors during collection?)", 3: "pytest hit an internal error",
                 4: "pytest usage error",
                 5: "no test ran (pytest exit status 5: nothing collected, or -k/-m deselected everything)"}


def worker_defaults() -> dict[str, str]:
    """Environment defaults for a worker; the user's own settings win.

    The suite's tensors are tiny: one intra-op thread is faster than two fighting over them, and
    deterministic. JAX compiles every new (configuration, shape, dtype) once, about 0.3-1 s each on this
    class of machine; the `ci` profile draws the same examples every run, so JAX's persistent compile
    cache turns a rerun's compiles into loads."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resconf" / "jax"
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@dataclass(frozen=True)
class CheckOptions:
    backends: tuple[str, ...]
    device: str = "cpu"
    profile: str = "ci"
    output: Path | None = None
    junitxml: Path | None = None
    xfails: tuple[Path, ...] = ()
    skip_xfails: bool = False
    worker_timeout_s: float = 1800.0
    test_timeout_s: float = 600.0
    pytest_args: tuple[str, ...] = ()

    @property
    def hung_after_s(self) -> float:
        """When a case with no result is taken as hung beyond the timer's reach (the timer fires at
        test_timeout_s; the margin lets a slow teardown finish)."""
        return self.test_timeout_s + max(2.0, 0.5 * self.test_timeout_s)


@dataclass(frozen=True)
class JunitPart:
    """A worker's JUnit file; where there is none (the worker died first, or these are the supervisor's
    own rows), its rows stand in for it."""

    xml: Path | None
    rows: tuple[ResultRow, ...]


@dataclass(frozen=True)
class BackendRun:
    """One backend's outcome: its rows (the worker's and the supervisor's own) and what went wrong."""

    rows: tuple[ResultRow, ...]
    junit: tuple[JunitPart, ...]
    notes: tuple[str, ...]  # crashes, restarts, guard warnings: printed in the summary
    load_error: str | None = None


@dataclass(frozen=True)
class WorkerExit:
    status: int | None  # exit status; negative: killed by that signal
    killed_for: str | None  # why the supervisor killed it: "hung" or "worker timeout"
    tail: str  # the end of its output


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
        write_parquet_atomic(to_table(rows), output)
        if opts.junitxml:
            problems_part = JunitPart(None, tuple(r for r in rows if r.backend in problems))
            _merge_junit([*junit_parts, problems_part], opts.junitxml)
    text = _summary_text(rows, notes, output)
    _write_text_atomic(output.with_suffix(".summary.txt"), text)
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
        cmd = _worker_cmd(name, opts, run_id, rows_path, events, junit, already if attempt else None)
        exit = _run_worker(cmd, workdir / f"{attempt}.log", events, deadline, opts.hung_after_s)
        got = rows_from_jsonl(rows_path)
        worker_rows += got
        junits.append(JunitPart(junit, tuple(got)))
        done = {r.test for r in worker_rows}
        log = guard.read_events(events)
        manifest = manifest or log.manifest
        if attempt == 0 and exit.status == WORKER_LOAD_FAILED and log.manifest is None:
            lines = exit.tail.strip().splitlines()
            return BackendRun((), (), (), load_error=lines[-1] if lines else f"backend {name!r} failed to load")
        if log.finished_status is not None and exit.killed_for is None:  # the session ended in order
            ended_in_order = exit.status in (0, 1)
            if not ended_in_order:
                own.append(_harness_row(name, opts, run_id, "RUN", _pytest_failure(exit)))
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


def _death(name: str, opts: CheckOptions, run_id: str, exit: WorkerExit, log: guard.WorkerLog, done: set[str]
           ) -> tuple[ResultRow, str]:
    """The failed row and summary note for a worker that died or was killed: the case it was running
    when it did (started, no result), or a RUN row if it was between cases."""
    how = _how_it_died(exit, opts)
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


def _worker_cmd(name: str, opts: CheckOptions, run_id: str, rows: Path, events: Path, junit: Path,
                already: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(SUITE_DIR), "-p", "no:cacheprovider", "-q", "--no-header",
           "-rN", "--backend", name, "--device", opts.device, "--profile", opts.profile, "--results-jsonl", str(rows),
           "--events-jsonl", str(events), "--run-id", run_id, "--junitxml", str(junit),
           f"--timeout={opts.test_timeout_s:g}", "-W", "ignore::RuntimeWarning"]
    cmd += ["--already-run", str(already)] if already else []
    cmd += [arg for path in opts.xfails for arg in ("--xfails", str(path))]
    cmd += ["--skip-xfails"] if opts.skip_xfails else []
    return cmd + list(opts.pytest_args)


def _run_worker(cmd: list[str], log: Path, events: Path, deadline: float, hung_after_s: float) -> WorkerExit:
    """Run a worker to its end, killing it if one case outlives `hung_after_s` or the worker its deadline."""
    watch = _CaseWatch(events)
    killed_for = None
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                env={**worker_defaults(), **os.environ, "PYTHONUNBUFFERED": "1"})
        while True:
            try:
                status = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            running_since = watch.running_since()
            now = time.monotonic()
            if running_since is not None and now - running_since > hung_after_s:
                killed_for = "hung"
            elif now > deadline:
                killed_for = "worker timeout"
            if killed_for:
                proc.kill()
                status = proc.wait()
                break
    return WorkerExit(status, killed_for, log.read_bytes()[-4000:].decode(errors="replace"))


class _CaseWatch:
    """Follows a worker's events file as it grows: since when (on our clock) the current case runs."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial, self.since = path, 0, b"", None

    def running_since(self) -> float | None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return None
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            event = json.loads(line).get("event")
            if event == "started":
                self.since = time.monotonic()
            elif event == "ended":
                self.since = None
        return self.since


def _die_with_parent() -> None:
    """In the worker, before exec (Linux): if `resconf check` is killed, its worker is killed too,
    instead of running on as an orphan."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _how_it_died(exit: WorkerExit, opts: CheckOptions) -> str:
    if exit.killed_for == "hung":
        return (f"timed out: no result {opts.hung_after_s:g} s after it started (the per-test --timeout of "
                f"{opts.test_timeout_s:g} s could not interrupt it), so the worker was killed")
    if exit.killed_for == "worker timeout":
        return f"the worker ran past its {opts.worker_timeout_s:g} s limit and was killed"
    if exit.status is not None and exit.status < 0:
        return f"the worker was killed by {signal.Signals(-exit.status).name}"
    return f"the worker exited with status {exit.status}"


def _pytest_failure(exit: WorkerExit) -> str:
    """A worker's session ended in order but not with results: say why, with pytest's own error text."""
    what = PYTEST_STATUS.get(exit.status, f"pytest exited with status {exit.status}")
    lines = exit.tail.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(("ERROR", "E  "))), len(lines) - 1)
    detail = " | ".join(line.strip().removeprefix("ERROR: ") for line in lines[start:] if line.strip())
    return f"{what}: {detail}"[:1500]


def _short(test: str) -> str:
    return test.rsplit("::", 1)[-1]


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


def _merge_junit(parts: list[JunitPart], target: Path) -> None:
    """One JUnit file: every worker's suites; for a worker that died before writing its file, and for
    the supervisor's own rows (dead cases, RUN, GUARD), a suite made from the rows."""
    root = ET.Element("testsuites")
    for part in parts:
        if part.xml is not None and part.xml.exists():
            tree = ET.parse(part.xml).getroot()
            root.extend(tree.iter("testsuite") if tree.tag == "testsuites" else [tree])
        elif part.rows:
            root.append(_junit_suite(part.rows))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, target)


def _junit_suite(rows: tuple[ResultRow, ...]) -> ET.Element:
    failed = [r for r in rows if r.outcome in summary.UNEXPECTED]
    suite = ET.Element("testsuite", name="resconf", tests=str(len(rows)), failures=str(len(failed)),
                       skipped=str(sum(r.outcome in ("skipped", "xfailed") for r in rows)))
    for row in rows:
        case = ET.SubElement(suite, "testcase", classname=f"{row.backend}.{row.property}",
                             name=row.test if row.test != "-" else row.config, time=f"{row.duration_s:.3f}")
        if row.outcome in summary.UNEXPECTED:
            ET.SubElement(case, "failure", message=row.message).text = row.rerun
        elif row.outcome in ("skipped", "xfailed"):
            ET.SubElement(case, "skipped", message=row.message)
    return suite


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

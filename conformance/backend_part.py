"""One worker's share of a backend (the whole backend, or one part of it under -n), run to its end.

After a crash or hang the case it died in gets a failed row of its own and the worker is restarted
without the cases already run (at most MAX_RESTARTS times). A worker killed at its limit or by an
interrupted check is not restarted: each case it left gets a failed row that says "not run" and why.
The guards are not applied here: they need every part of the backend (conformance/check.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from resconf.conformance import guard, worker
from resconf.conformance.constants import WORKER_LOAD_FAILED, WORKER_NO_DEVICE
from resconf.conformance.harness_rows import case_row, harness_row
from resconf.conformance.interrupt import Interrupt
from resconf.conformance.junit import JunitPart
from resconf.conformance.options import CheckOptions
from resconf.conformance.progress import WorkerProgress
from resconf.conformance.results import ResultRow, rows_from_jsonl

NOTHING_RAN = 5  # pytest's exit status when no test was selected
MAX_RESTARTS = 3  # a backend that kills its worker again and again is given up on, not retried forever


@dataclass(frozen=True)
class PartRun:
    """One part's outcome: its rows (the worker's and the supervisor's own) and what went wrong."""

    rows: tuple[ResultRow, ...]
    junit: tuple[JunitPart, ...]
    notes: tuple[str, ...]  # crashes, restarts: printed in the summary
    manifest: guard.Manifest | None = None  # what the worker collected and selected
    guardable: bool = False  # it ended in order or recorded its dead cases: coverage can be judged
    load_error: str | None = None
    logs: tuple[Path, ...] = ()  # the worker's output, one file per attempt
    backend: str | None = None  # the backend's own name, once a worker loaded it (rows are keyed by it)


def run_part(name: str, opts: CheckOptions, run_id: str, workdir: Path, shard: str | None,
             progress: WorkerProgress, say=print, stop: Interrupt | None = None) -> PartRun:
    stop = stop or Interrupt()
    worker_rows: list[ResultRow] = []
    own: list[ResultRow] = []  # rows the supervisor writes: dead cases, cases not run, RUN
    notes: list[str] = []
    junits: list[JunitPart] = []
    logs: list[Path] = []
    manifest: guard.Manifest | None = None
    backend: str | None = None  # its own name, from the first worker that loaded it
    done: set[str] = set()
    dead: set[str] = set()
    ended_in_order = False
    for attempt in range(MAX_RESTARTS + 1):
        rows_path, events, junit, already, log_path = (workdir / f"{attempt}.{ext}" for ext in
                                                       ("rows.jsonl", "events.jsonl", "xml", "done", "log"))
        if attempt:
            already.write_text("".join(f"{test}\n" for test in sorted(done | dead)))
        cmd = worker.worker_command(name, opts, run_id, rows_path, events, junit, already if attempt else None,
                                    shard)
        exit = worker.run_worker(cmd, log_path, events, opts, progress, stop, resumed=len(done | dead))
        logs.append(log_path)
        got = rows_from_jsonl(rows_path)
        worker_rows += got
        junits.append(JunitPart(junit, tuple(got)))
        done = {r.test for r in worker_rows}
        log = guard.read_events(events)
        manifest = manifest or log.manifest
        backend = backend or log.backend
        if attempt == 0 and exit.status == WORKER_LOAD_FAILED and log.manifest is None:
            return PartRun((), (), (), load_error=exit_message(exit.tail) or f"backend {name!r} failed to load",
                           logs=tuple(logs))
        if attempt == 0 and exit.killed_for == "load timeout" and log.manifest is None:
            return PartRun((), (), (), load_error=f"backend {name!r}: {worker.how_it_died(exit, opts)}",
                           logs=tuple(logs))
        if attempt == 0 and exit.status == WORKER_NO_DEVICE and log.manifest is None:
            reason = exit_message(exit.tail).removeprefix("resconf: ")
            row = dataclasses.replace(harness_row(name, opts, run_id, "RUN", reason), outcome="skipped")
            return PartRun((row,), (JunitPart(None, (row,)),), (f"backend {name} {reason}",), logs=tuple(logs))
        if log.finished_status is not None and exit.killed_for is None:  # the session ended in order
            # A shard that -k left empty is no failure: its cases are in the other shards (conformance/check.py
            # fails the run when every shard is empty, as pytest would the unsharded one).
            empty_shard = exit.status == NOTHING_RAN and shard is not None and manifest is not None \
                and not manifest.selected
            ended_in_order = exit.status in (0, 1) or empty_shard
            if not ended_in_order:
                own.append(harness_row(name, opts, run_id, "RUN", worker.pytest_failure(exit)))
            break
        if stop.signum and manifest is None:
            own.append(harness_row(name, opts, run_id, "RUN", f"not run: the check was interrupted ({stop.name}) "
                                   "before the worker had collected its cases"))
            break
        row, note = death(name, opts, run_id, exit, log, done)
        own.append(row)
        dead.add(row.test)  # "-" when it died between cases: no node id, so leaving it out is harmless
        notes.append(note)
        say(f"resconf: {note}")
        left = manifest.selected - done - dead if manifest else set()
        why = unrun_reason(exit, opts, stop, attempt)
        if why and left:
            own += not_run(name, opts, run_id, manifest, left, why)
            notes.append(f"backend {name}: {len(left)} selected cases {why}")
            say(f"resconf: {notes[-1]}")
        if why or not left:
            break
        notes.append(f"backend {name}: worker restarted without the {len(done | dead)} cases already run "
                     f"({len(left)} left)")
        say(f"resconf: {notes[-1]}")
    return PartRun(tuple(worker_rows + own), (*junits, JunitPart(None, tuple(own))), tuple(notes), manifest,
                   guardable=ended_in_order or bool(dead), logs=tuple(logs), backend=backend)


def unrun_reason(exit: worker.WorkerExit, opts: CheckOptions, stop: Interrupt, attempt: int) -> str | None:
    """Why the cases a dead worker left are not run again (None: the worker is restarted without them)."""
    if stop.signum:
        return f"not run: the check was interrupted ({stop.name})"
    if exit.killed_for == "worker timeout":
        return f"not run: {worker.how_it_died(exit, opts)}"
    if attempt == MAX_RESTARTS:  # a backend that kills its worker again and again
        return f"not run: gave up after {MAX_RESTARTS} restarts of the worker"
    return None


def not_run(name: str, opts: CheckOptions, run_id: str, manifest: guard.Manifest, left: set[str], why: str
            ) -> list[ResultRow]:
    """A failed row for each selected case that never ran, saying why: never counted as passed, never
    silently missing (and so no coverage gap for the guard to report again)."""
    return [case_row(case, name, opts, run_id, why) for case in manifest.cases if case.test in left]


def death(name: str, opts: CheckOptions, run_id: str, exit: worker.WorkerExit, log: guard.WorkerLog, done: set[str]
          ) -> tuple[ResultRow, str]:
    """The failed row and summary note for a worker that died or was killed: the case it was running
    when it did (started, no result), or a RUN row if it was between cases."""
    how = worker.how_it_died(exit, opts)
    culprit = next((c for c in reversed(log.started) if c.test not in done and c.test not in log.ended), None)
    if culprit is None:
        row = harness_row(name, opts, run_id, "RUN", f"{how} between cases: {last_line(exit.tail)}")
        return row, f"backend {name}: {how} outside any case"
    row = case_row(culprit, name, opts, run_id, f"{how} while running {culprit.test.rsplit('::', 1)[-1]}")
    return row, f"backend {name}: {how} in {culprit.test}"


def exit_message(tail: str) -> str:
    """The message a worker ended with through pytest.exit (pytest frames it as '! ..Exit: MESSAGE !')."""
    line = last_line(tail) if tail.strip() else ""
    return line.removeprefix("! _pytest.outcomes.Exit: ").removesuffix(" !")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"

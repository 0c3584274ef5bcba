"""Rows `resconf check` writes itself, where no worker could: about a backend's run as a whole (RUN),
its coverage (GUARD), or the case a worker died in.

The supervisor knows a backend by the spelling the user gave (a built-in name, an entry point,
pkg.mod:Class); its rows are keyed by the backend's own name, which only a worker that loaded it knows
(guard.WorkerLog.backend): `as_backend` renames them once it is known. Rerun lines keep the spelling.
"""
from __future__ import annotations

import dataclasses
import shlex
from datetime import datetime, timezone

from resconf.backends.modes import DEFAULT_MODE
from resconf.conformance.guard import Case
from resconf.conformance.options import CheckOptions
from resconf.conformance.results import ResultRow


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def rerun_line(name: str, opts: CheckOptions) -> str:
    """`resconf check` on this backend with the run's selection (-k, the arguments after --) and
    expected-failure files, shell-quoted."""
    args = ["resconf", "check", "--backend", name, "--device", opts.device, "--profile", opts.profile]
    args += ["--max-examples", str(opts.max_examples)] if opts.max_examples else []
    args += [arg for mode in opts.modes for arg in ("--mode", mode)] if opts.modes != (DEFAULT_MODE,) else []
    args += [arg for path in opts.xfails for arg in ("--xfails", str(path))]
    args += ["--skip-xfails"] if opts.skip_xfails else []
    rest = list(opts.pytest_args)
    if rest[:1] == ["-k"] and len(rest) > 1:  # conformance.cli puts its own -k first
        args, rest = args + rest[:2], rest[2:]
    return shlex.join(args + (["--", *rest] if rest else []))


def harness_row(name: str, opts: CheckOptions, run_id: str, prop: str, message: str, *, dtype: str = "-",
                config: str = "-", mode: str = "-") -> ResultRow:
    """A failed row about the backend's run as a whole (RUN: it could not run; GUARD: it covered too little);
    dtype and mode "-" where it is about no one dtype or mode."""
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype=dtype, property=prop, test="-",
                     config=config, outcome="failed", measured=None, bound=None, comparison="", worst_config="",
                     counterexample="", message=message, rerun=rerun_line(name, opts),
                     seed="", examples=0, duration_s=0.0, timestamp=now(), mode=mode)


def case_row(case: Case, name: str, opts: CheckOptions, run_id: str, message: str) -> ResultRow:
    """A failed row for the case a worker died or hung in, as the worker would have written it."""
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype=case.dtype, property=case.property,
                     test=case.test, config=case.config, outcome="failed", measured=None, bound=None,
                     comparison="", worst_config="", counterexample="", message=message, rerun=case.rerun,
                     seed="", examples=0, duration_s=0.0, timestamp=now(), mode=case.mode)


def as_backend(run, spelled: str, own: str):
    """A backend's run (check.BackendRun) with the rows written under its spelling renamed to its own
    name, in its rows and in the JUnit parts that stand in rows for a file."""
    if own == spelled:
        return run

    def renamed(rows: tuple[ResultRow, ...]) -> tuple[ResultRow, ...]:
        return tuple(dataclasses.replace(r, backend=own) if r.backend == spelled else r for r in rows)

    junit = tuple(dataclasses.replace(part, rows=renamed(part.rows)) for part in run.junit)
    return dataclasses.replace(run, rows=renamed(run.rows), junit=junit)

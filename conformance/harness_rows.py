"""Rows `resconf check` writes itself, where no worker could: about a backend's run as a whole (RUN),
its coverage (GUARD), or the case a worker died in."""
from __future__ import annotations

from datetime import datetime, timezone

from resconf.conformance.guard import Case
from resconf.conformance.options import CheckOptions
from resconf.conformance.results import ResultRow


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def harness_row(name: str, opts: CheckOptions, run_id: str, prop: str, message: str, *, dtype: str = "-",
                config: str = "-") -> ResultRow:
    """A failed row about the backend's run as a whole (RUN: it could not run; GUARD: it covered too little)."""
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype=dtype, property=prop, test="-",
                     config=config, outcome="failed", measured=None, bound=None, comparison="", worst_config="",
                     counterexample="", message=message,
                     rerun=f"resconf check --backend {name} --device {opts.device} --profile {opts.profile}",
                     seed="", examples=0, duration_s=0.0, timestamp=now())


def case_row(case: Case, name: str, opts: CheckOptions, run_id: str, message: str) -> ResultRow:
    """A failed row for the case a worker died or hung in, as the worker would have written it."""
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype=case.dtype, property=case.property,
                     test=case.test, config=case.config, outcome="failed", measured=None, bound=None,
                     comparison="", worst_config="", counterexample="", message=message, rerun=case.rerun,
                     seed="", examples=0, duration_s=0.0, timestamp=now())

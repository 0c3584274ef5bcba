"""What a worker tells `resconf check` besides its result rows, and the guards built on it.

A worker (one pytest process per backend) appends events to a JSON-lines file as it goes: the
backend's own name once loaded (the supervisor's rows are keyed by it, as the worker's are), the
manifest of everything it collected, `started`/`ended` around each case, and `finished` when the
session ends in order. From them the supervisor knows which case was running when a worker died or
hung (so that case gets a failed row and the worker can resume without it), and whether the run
covered what the backend claims: a run that silently collected or ran less must not pass a gate.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from resconf.backends.modes import DEFAULT_MODE
from resconf.conformance.results import ResultRow


@dataclass(frozen=True)
class Case:
    """One collected case, described as its result row will be."""

    test: str  # pytest node id
    property: str
    dtype: str  # "-" when the case has no dtype parameter
    config: str
    rerun: str
    mode: str = DEFAULT_MODE  # the execution mode (backends/modes.py); older manifests had none: eager


@dataclass(frozen=True)
class Manifest:
    """Everything the worker collected, before any deselection, and what was left selected."""

    backend: str  # the backend's own name (its `name`), whatever spelling selected it
    claimed_dtypes: tuple[str, ...]
    filtered: bool  # the user narrowed the run with -k or -m: missing coverage only warns
    cases: tuple[Case, ...]
    selected: frozenset[str]  # node ids that survived -k, -m, --deselect and other plugins
    skipped_modules: tuple[tuple[str, str], ...]  # (module, reason): skipped whole at collection
    gated_out: int = 0  # cases the gate left out (conformance/gate.py), counted among the not selected

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"selected": sorted(self.selected)}

    @classmethod
    def from_json(cls, m: dict) -> Manifest:
        return cls(backend=m["backend"], claimed_dtypes=tuple(m["claimed_dtypes"]), filtered=m["filtered"],
                   cases=tuple(Case(**c) for c in m["cases"]), selected=frozenset(m["selected"]),
                   skipped_modules=tuple((s[0], s[1]) for s in m["skipped_modules"]),
                   gated_out=m.get("gated_out", 0))


@dataclass(frozen=True)
class WorkerLog:
    """What one worker process reported."""

    manifest: Manifest | None
    started: tuple[Case, ...]
    ended: frozenset[str]
    finished_status: int | None  # pytest's exit status; None when the session did not end in order
    backend: str | None = None  # the backend's own name, once the worker loaded it (rows are keyed by it)


# --- worker side: a pytest plugin object, registered by conformance.plugin when --resconf-events-jsonl is given ---

class EventWriter:
    """Appends one flushed line per event, so a worker killed at any moment leaves every earlier event."""

    def __init__(self, path: Path, backend: Callable[[], str], claimed_dtypes: Callable[[], tuple[str, ...]],
                 describe: Callable[[pytest.Item], Case], already_run: frozenset[str]) -> None:
        self.path = path
        self.backend = backend
        self.claimed_dtypes = claimed_dtypes
        self.describe = describe
        self.already_run = already_run
        self.skipped_modules: list[tuple[str, str]] = []

    def emit(self, event: str, **fields) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, **fields}) + "\n")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self) -> None:  # after conformance.plugin loaded the backend (a failure exits first)
        self.emit("loaded", backend=self.backend())

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # e.g. a module-level importorskip: its properties silently vanish otherwise
            path, _, reason = report.longrepr if isinstance(report.longrepr, tuple) else ("", 0, report.longrepr)
            where = report.nodeid or str(path)  # a path given outside the rootdir has an empty node id
            self.skipped_modules.append((where, str(reason).removeprefix("Skipped: ")))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]):
        everything = list(items)  # before -k, -m, --deselect and any other plugin narrow it
        yield
        manifest = Manifest(backend=self.backend(), claimed_dtypes=self.claimed_dtypes(),
                            filtered=bool(config.getoption("keyword") or config.getoption("markexpr")),
                            cases=tuple(self.describe(item) for item in everything),
                            selected=frozenset(item.nodeid for item in items),
                            skipped_modules=tuple(self.skipped_modules),
                            gated_out=getattr(config.pluginmanager.get_plugin("resconf-selection"), "gated_out", 0))
        self.emit("collected", manifest=manifest.to_json())
        if self.already_run:  # a resumed worker: leave out what the crashed one finished (exact ids)
            done = [item for item in items if item.nodeid in self.already_run]
            items[:] = [item for item in items if item.nodeid not in self.already_run]
            config.hook.pytest_deselected(items=done)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        self.emit("started", case=dataclasses.asdict(self.describe(item)))

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.emit("ended", test=nodeid)

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self.emit("finished", status=int(exitstatus))


# --- supervisor side ---

def read_events(path: Path) -> WorkerLog:
    manifest, started, ended, status, backend = None, [], set(), None, None
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # the torn last line of a killed worker
            continue
        kind = event.get("event")
        if kind == "loaded":
            backend = event["backend"]
        elif kind == "collected":
            manifest = Manifest.from_json(event["manifest"])
        elif kind == "started":
            started.append(Case(**event["case"]))
        elif kind == "ended":
            ended.add(event["test"])
        elif kind == "finished":
            status = event["status"]
    return WorkerLog(manifest=manifest, started=tuple(started), ended=frozenset(ended), finished_status=status,
                     backend=backend)


@dataclass(frozen=True)
class Gap:
    """A property the backend should have results for and has not."""

    property: str
    dtypes: tuple[str, ...]
    collected: int
    selected: int
    modes: tuple[str, ...] = (DEFAULT_MODE,)

    def describe(self) -> str:
        why = "deselected" if self.selected == 0 else "selected but never ran"
        modes = "" if self.modes == (DEFAULT_MODE,) else f" in mode {', '.join(self.modes)}"
        return (f"no result for {self.property} in {', '.join(self.dtypes)}{modes} (the backend claims "
                f"{'it' if len(self.dtypes) == 1 else 'them'}): {self.collected} cases collected, "
                f"{self.selected} selected ({why})")


def coverage_gaps(manifest: Manifest, rows: list[ResultRow]) -> list[Gap]:
    """Every (property, dtype, mode) the suite collected for a dtype the backend claims, in each mode the run
    selected, needs at least one row; a skipped row counts (it says why: an unclaimed mode is skipped, not
    missing). The catalogue is what the suite collected before any deselection, so it follows the properties
    implemented in conformance/ without a list to keep."""
    have = {(r.property, r.dtype, r.mode) for r in rows}
    claimed = set(manifest.claimed_dtypes) | {"-"}
    missing: dict[str, list[Case]] = {}
    for case in manifest.cases:
        if case.dtype in claimed and (case.property, case.dtype, case.mode) not in have:
            missing.setdefault(case.property, []).append(case)
    gaps = []
    for prop, cases in sorted(missing.items()):
        dtypes = tuple(dict.fromkeys(c.dtype for c in cases))
        modes = tuple(dict.fromkeys(c.mode for c in cases))
        gaps.append(Gap(prop, dtypes, len(cases), sum(c.test in manifest.selected for c in cases), modes))
    return gaps


def expected_coverage(manifest: Manifest) -> dict:
    """What the whole collection covers, for `resconf merge` to hold the shards of a run against: every
    (property, dtype) with a case in a claimed dtype, and whether -k/-m narrowed the run."""
    claimed = set(manifest.claimed_dtypes) | {"-"}
    pairs = sorted({(c.property, c.dtype) for c in manifest.cases if c.dtype in claimed})
    return {"expected": [list(p) for p in pairs], "filtered": manifest.filtered}


def tested_nothing(rows: list[ResultRow]) -> str | None:
    """Why a backend's run proves nothing (every case skipped: nothing passed, failed or met an expected
    failure), or None. An expected failure counts as tested: the case ran and showed the known deviation."""
    if not rows or any(r.outcome != "skipped" for r in rows):
        return None
    return f"tested nothing: all {len(rows)} cases were skipped, none ran; e.g. {rows[0].message}"

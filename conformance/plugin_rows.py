"""One result row per case (--resconf-results-jsonl): the outcome, the recorder's measurements, the first
line of a failure, hypothesis' counterexample and its reproduce blob."""
from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import pytest

from resconf.backends.modes import MODES
from resconf.conformance import xfails
from resconf.conformance.phase_times import phase
from resconf.conformance.plugin_backends import VERSIONS
from resconf.conformance.plugin_cases import fixed_config, mode_of, params_of, property_of, rerun_of, subject_of
from resconf.conformance.recorder import PropertyRecorder
from resconf.conformance.results import OUTCOMES, ResultRow

RECORDER = pytest.StashKey[PropertyRecorder]()
OUTCOME = pytest.StashKey[dict]()


@pytest.fixture
def prop(request: pytest.FixtureRequest) -> PropertyRecorder:
    item = request.node
    recorder = PropertyRecorder(property_id=property_of(item), subject=subject_of(item), rerun=rerun_of(item),
                                held_in=MODES[mode_of(item)].parameters)
    item.stash[RECORDER] = recorder
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    state = item.stash.setdefault(OUTCOME, {"duration": 0.0})
    state["duration"] += report.duration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        state["report"] = report
    if report.when == "teardown":
        with phase("recording the row"):
            _write_row(item, state.get("report", report), state["duration"])
    return report


STRICT_XPASS = "[XPASS(strict)]"  # pytest's text for a strict xfail that passed (reported as failed)


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):  # a strict entry that passes is a failed report (below)
        # Not strict: an inherited entry (the framework may fail here; this adapter did not), or a deviation
        # that shows on some draws or machines only: a pass is what the entry allows, not an unexpected result.
        return "xfailed" if report.skipped else "passed"
    if report.failed and str(report.longrepr).startswith(STRICT_XPASS):
        return "xpassed"
    return {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]


def _first_line(report: pytest.TestReport) -> str:
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if hasattr(report, "wasxfail"):
        if not report.skipped and report.wasxfail.startswith(xfails.INHERITED):
            return f"passed; this inherited expected failure did not occur: {report.wasxfail}"
        if not report.skipped:
            return f"passed; this expected failure is not strict and did not occur here: {report.wasxfail}"
        return f"expected failure: {report.wasxfail}"
    if report.failed and str(report.longrepr).startswith(STRICT_XPASS):
        reason = str(report.longrepr).removeprefix(STRICT_XPASS).strip()
        return f"passed, but an expected-failure entry says it fails (stale? remove it): {reason}"
    text = report.longreprtext or ""
    for line in _raised(text).splitlines():
        if line.startswith("E ") and line[2:].strip():
            return line[2:].strip()[:500]
    return text.strip().splitlines()[-1][:500] if text.strip() else ""


CHAINED = ("The above exception was the direct cause of the following exception:",  # raise X from Y
           "During handling of the above exception, another exception occurred:")  # raise X in an except


def _raised(text: str) -> str:
    """The part of a failure's text about the exception actually raised: a chain prints its causes first."""
    for separator in CHAINED:
        text = text.rsplit(separator, 1)[-1]
    return text


HYPOTHESIS_HEADERS = ("Falsifying example", "Failing test case")  # older and newer hypothesis wording


def _counterexample(report: pytest.TestReport) -> tuple[str, str]:
    """Hypothesis' minimal failing example (its call, draws and our `drawn:` note), and the
    reproduce_failure blob, from the failure text."""
    lines = [line.removeprefix("E").strip() for line in (report.longreprtext or "").splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith(HYPOTHESIS_HEADERS)), None)
    example = []
    if start is not None:
        for line in lines[start:]:
            if line.startswith(("Explanation:", "You can reproduce")):
                break
            example.append(line)
    blob = next((line for line in lines if "@reproduce_failure" in line), "")
    return " ".join(" ".join(example).split()), blob


def _write_row(item: pytest.Item, report: pytest.TestReport, duration: float) -> None:
    path = item.config.getoption("--resconf-results-jsonl")
    if not path:
        return
    params = params_of(item)
    recorder = item.stash.get(RECORDER, None)
    outcome = _outcome(report)
    assert outcome in OUTCOMES
    counterexample, blob = _counterexample(report) if report.failed else ("", "")
    curves = recorder.curves if recorder else []
    row = ResultRow(
        run_id=item.config.getoption("--resconf-run-id") or "adhoc",
        backend=str(params.get("backend_name", "-")), device=item.config.getoption("--resconf-device"),
        dtype=str(params.get("dtype", "-")), property=property_of(item), test=item.nodeid,
        config=fixed_config(item), outcome=outcome,
        measured=recorder.measured if recorder else None, bound=recorder.bound if recorder else None,
        comparison=recorder.comparison if recorder else "", worst_config=recorder.worst_config if recorder else "",
        counterexample=counterexample, message=_first_line(report) if outcome != "passed" else "",
        rerun=rerun_of(item), seed=blob, examples=recorder.examples if recorder else 0, duration_s=duration,
        curve_x=[c[1] for c in curves], curve_y=[c[2] for c in curves], curve_label=[c[0] for c in curves],
        mode=mode_of(item),
        suite_version=_suite_version(), backend_versions=VERSIONS.get(str(params.get("backend_name")), "{}"),
        python_version=platform.python_version(), machine=f"{platform.node()} {platform.machine()}",
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    with open(path, "a") as f:  # one line per test, flushed: a killed worker loses at most the current test
        f.write(row.to_json() + "\n")


def _suite_version() -> str:
    try:
        return version("resconf")
    except PackageNotFoundError:
        return "unknown"

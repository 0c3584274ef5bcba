"""The pytest plugin: backend selection, profiles, expected failures and the results recorder.

Registered as a `pytest11` entry point, so it loads in every pytest session of an environment that has
resconf installed; it acts only when the session runs the suite (its folder or `--pyargs
resconf.conformance` among the arguments, or a `--resconf-backend` given). `resconf check` is a thin front over
this; `pytest --pyargs resconf.conformance --resconf-backend torch` works from any folder as well.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import threading
import zlib
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from resconf.backends.base import DEVICES, Backend, DeviceUnavailable
from resconf.backends.config import DTYPES
from resconf.backends.registry import load_backend
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.baseline import Baselines
from resconf.conformance import profiles, shards, xfails
from resconf.conformance import recorder as recording
from resconf.conformance.guard import Case, EventWriter
from resconf.conformance.home import HOME
from resconf.conformance.output_dtypes import Checked
from resconf.conformance.recorder import PropertyRecorder
from resconf.conformance.results import OUTCOMES, ResultRow

WORKER_LOAD_FAILED = 6  # exit status of a run whose backend cannot be loaded (conformance.check reads it)
WORKER_NO_DEVICE = 7  # ... and of one whose backend does not run on the device asked for (a skip, not a failure)
RECORDER = pytest.StashKey[PropertyRecorder]()
OUTCOME = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("resconf", "resconf conformance")
    group.addoption("--resconf-backend", action="append", default=[], metavar="NAME",
                    help="backend to check: a built-in name, an entry point, or package.module:attr (repeatable)")
    group.addoption("--resconf-device", default="cpu", choices=DEVICES,
                    help="device the backends run on (default cpu)")
    group.addoption("--resconf-max-examples", type=int, default=None, metavar="N",
                    help="examples per property, overriding the profile's (heavy properties run a fraction)")
    group.addoption("--resconf-profile", default=profiles.DEFAULT, choices=profiles.PROFILES,
                    help=f"hypothesis profile (default {profiles.DEFAULT}, as for resconf check)")
    group.addoption("--resconf-xfails", action="append", default=[], metavar="FILE",
                    help="expected-failure file (TOML) on top of the backend's built-in one (repeatable)")
    group.addoption("--resconf-skip-xfails", action="store_true", help="ignore every expected-failure entry")
    group.addoption("--resconf-results-jsonl", default=None, metavar="FILE",
                    help="append one JSON result row per test to FILE (resconf check merges them into Parquet)")
    group.addoption("--resconf-run-id", default=None, help="run id written into every result row")
    group.addoption("--resconf-events-jsonl", default=None, metavar="FILE",
                    help="append what was collected and which case starts and ends to FILE (for resconf check)")
    group.addoption("--resconf-shard", default=None, metavar="K/N",
                    help="run shard K of N: the selected cases split in N, balanced by --resconf-durations-file")
    group.addoption("--resconf-durations-file", default=None, metavar="FILE",
                    help=f"recorded case durations that balance the shards (default {shards.DURATIONS_FILE} "
                         "in the folder pytest runs from, when present)")
    group.addoption("--resconf-already-run", default=None, metavar="FILE",
                    help="node ids (one a line) to leave out: resuming a worker that crashed")


SUITE_DIR = Path(__file__).parent
ACTIVE = pytest.StashKey[bool]()


def _runs_the_suite(config: pytest.Config) -> bool:
    """Whether this session runs the conformance suite (else every hook below stands aside)."""
    if config.getoption("--resconf-backend"):
        return True
    for arg in config.args:
        target = arg.split("::", 1)[0]
        if config.getoption("pyargs") and target.split(".")[:2] == ["resconf", "conformance"]:
            return True
        path = (config.invocation_params.dir / target).resolve()
        if path == SUITE_DIR or SUITE_DIR in path.parents:
            return True
    return False


def _active(config: pytest.Config) -> bool:
    return config.stash.get(ACTIVE, False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "property(id): the SPEC property ID this test checks")
    config.addinivalue_line("markers", "dtypes(*names): dtypes this property runs in (default: all)")
    config.stash[ACTIVE] = _runs_the_suite(config)
    if not _active(config):
        return
    # Hypothesis' files (its constants cache, the nightly example database) go under .resconf/ in the folder
    # the user ran from, as all resconf writes; a user's own HYPOTHESIS_STORAGE_DIRECTORY wins for the cache.
    hypothesis_home = config.invocation_params.dir / HOME / "hypothesis"
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        set_hypothesis_home_dir(hypothesis_home)
    profiles.register(hypothesis_home / "examples")
    profile = config.getoption("--resconf-profile")
    settings.load_profile(profile)
    max_examples = config.getoption("--resconf-max-examples")
    if max_examples is not None:
        if max_examples < 1:
            raise pytest.UsageError(f"--max-examples must be at least 1, got {max_examples}")
        settings.register_profile("resconf-override", settings(settings.default, max_examples=max_examples))
        settings.load_profile("resconf-override")
    hh.STRUCTURE_PER_EXAMPLE = profile in profiles.STRUCTURE_DRAWN
    recording.LAZY_BASELINE = profile != "calibrate"
    config.stash[OUTCOME] = {}
    shard = config.getoption("--resconf-shard")
    if shard:
        try:
            chosen = shards.Shard.parse(shard)
            given = config.getoption("--resconf-durations-file")
            durations = shards.load_durations(Path(given) if given else config.invocation_params.dir
                                              / shards.DURATIONS_FILE)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.pluginmanager.register(shards.ShardSelector(chosen, durations), "resconf-shard")
    events = config.getoption("--resconf-events-jsonl")
    if events:
        already = config.getoption("--resconf-already-run")
        done = frozenset(Path(already).read_text().splitlines()) if already else frozenset()
        spelled = (config.getoption("--resconf-backend") or ["numpy"])[0]
        name = lambda: _NAME_OF[spelled]  # noqa: E731  known once loaded (pytest_sessionstart)
        claimed = lambda: tuple(sorted(_LOADED[name()].capabilities.dtypes))  # noqa: E731
        config.pluginmanager.register(EventWriter(Path(events), name, claimed, _case_of, done), "resconf-events")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _active(metafunc.config):
        return
    if "backend_name" in metafunc.fixturenames:  # by the backend's own name, whatever spelling selected it
        names = list(dict.fromkeys(_NAME_OF.values()))
        metafunc.parametrize("backend_name", names, ids=names, scope="session")
    if "dtype" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("dtypes")
        metafunc.parametrize("dtype", marker.args if marker else DTYPES)


# The session's backends by their own name (`name`), which keys test ids, rows and expected failures, and
# the spelling that selected each (a built-in name, an entry point, pkg.mod:Class), which rerun lines keep.
_LOADED: dict[str, Backend] = {}
_NAME_OF: dict[str, str] = {}  # spelling -> own name
_SPELLING: dict[str, str] = {}  # own name -> spelling
_VERSIONS: dict[str, str] = {}  # own name -> the backend_versions column


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load every backend up front: one that cannot load ends the run with one clear line, not a
    failure per test."""
    config = session.config
    if not _active(config):
        return
    device = config.getoption("--resconf-device")
    for known in (_LOADED, _NAME_OF, _SPELLING, _VERSIONS):
        known.clear()
    for spelled in config.getoption("--resconf-backend") or ["numpy"]:
        try:
            backend = load_backend(spelled, device=device)
        except DeviceUnavailable as exc:
            pytest.exit(f"resconf: skipped: {exc}", returncode=WORKER_NO_DEVICE)
        except Exception as exc:  # noqa: BLE001  any import or constructor error ends the run the same way
            pytest.exit(f"backend {spelled!r} could not be loaded on {device}: {_one_line(exc)}",
                        returncode=WORKER_LOAD_FAILED)
        try:  # read here, once: raising later, it would end the session as pytest's internal error
            backend.capabilities.dtypes
        except Exception as exc:  # noqa: BLE001
            pytest.exit(f"backend {spelled!r} could not be loaded on {device}: its capabilities raised "
                        f"{type(exc).__name__}: {_one_line(exc)}", returncode=WORKER_LOAD_FAILED)
        name = own_name(backend)
        if name in _LOADED and type(_LOADED[name]) is not type(backend):
            raise pytest.UsageError(f"backends {_SPELLING[name]!r} and {spelled!r} are both named {name!r} (their "
                                    "`name`), which keys test ids, results and expected failures: give each its own")
        _NAME_OF[spelled] = name
        if name not in _LOADED:  # one backend by two spellings runs once, under the first
            _LOADED[name], _SPELLING[name], _VERSIONS[name] = backend, spelled, _versions(backend)
    if len(_LOADED) == 1:
        [(name, spelled)] = _SPELLING.items()
        _name_junit_suite(config, name, spelled)


def own_name(backend: Backend) -> str:
    """A backend's own name: its `name`, or its class's where it left the base class's default."""
    name = backend.name
    return name if isinstance(name, str) and name.strip() and name != Backend.name else type(backend).__name__


def _versions(backend: Backend) -> str:
    """The backend_versions column: its versions() as JSON, or what went wrong (the cases run all the same)."""
    try:
        return json.dumps(backend.versions(), sort_keys=True)
    except Exception as exc:  # noqa: BLE001  an adapter's bug in versions() must not stop its cases
        return json.dumps({"error": f"versions() raised {type(exc).__name__}: {_one_line(exc)}"})


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _name_junit_suite(config: pytest.Config, name: str, spelled: str) -> None:
    """resconf check names a worker's JUnit suite after the backend as spelled; it is renamed after the
    backend's own name, as its rows are (pytest's LogXML reads suite_name when it writes the file)."""
    from _pytest.junitxml import xml_key

    from resconf.conformance.worker import junit_suite_name

    xml = config.stash.get(xml_key, None)
    if xml is not None and xml.suite_name == junit_suite_name(spelled):
        xml.suite_name = junit_suite_name(name)


@pytest.fixture(scope="session")
def backend(backend_name: str):
    return _LOADED[backend_name]


@pytest.fixture
def subject(backend, dtype: str):
    """The backend, after checking it claims the dtype (else the case is skipped, and recorded so)."""
    if dtype not in backend.capabilities.dtypes:
        pytest.skip(f"{backend.name} on {backend.device} does not claim {dtype}")
    return Checked(backend)  # every result held to the dtype asked (conformance/output_dtypes.py)


@pytest.fixture(scope="session")
def oracle():
    return load_backend("numpy")  # on the CPU whatever --device says: the reference, not a subject


@pytest.fixture(scope="session")
def baseline():
    """The oracle's maths in the working dtype, another order (backends/controls.py), in a few lazily run
    draws (conformance/baseline.py): it measures each comparison's error budget (conformance/budgets.py)."""
    return Baselines()


@pytest.fixture
def case(request: pytest.FixtureRequest) -> int:
    """A stable number per case, the backend left out: every backend gets the same fixed structure.
    It is len(DTYPES) * (the number of the case's family: its parameters but dtype) + the dtype's index, so the
    four dtypes of one family rotate through consecutive structures (hypothesis_helpers.fixed_structure)."""
    params = _params_of(request.node)
    family = sorted((k, str(v)) for k, v in params.items() if k not in ("backend_name", "dtype"))
    dtype = DTYPES.index(params["dtype"]) if params.get("dtype") in DTYPES else 0
    return len(DTYPES) * zlib.crc32(f"{request.node.originalname}{family}".encode()) + dtype


@pytest.fixture
def prop(request: pytest.FixtureRequest) -> PropertyRecorder:
    item = request.node
    recorder = PropertyRecorder(property_id=_property_of(item), subject=_subject_of(item), rerun=_rerun_of(item))
    item.stash[RECORDER] = recorder
    return recorder


def _property_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("property")
    return marker.args[0] if marker else "?"


def _params_of(item: pytest.Item) -> dict:
    return dict(getattr(item, "callspec", None).params) if hasattr(item, "callspec") else {}


def _subject_of(item: pytest.Item) -> str:
    p = _params_of(item)
    return f"backend={p.get('backend_name', '-')} device={item.config.getoption('--resconf-device')} dtype={p.get('dtype', '-')}"


def _rerun_of(item: pytest.Item) -> str:
    """The case alone, with the backend as the user spelled it (its own name may not load it)."""
    name = str(_params_of(item).get("backend_name", "numpy"))
    cfg = item.config
    return shlex.join(["resconf", "check", "--backend", _SPELLING.get(name, name), "--device",
                       cfg.getoption("--resconf-device"), "--profile", cfg.getoption("--resconf-profile"),
                       "-k", item.name])


def _case_of(item: pytest.Item) -> Case:
    return Case(test=item.nodeid, property=_property_of(item), dtype=str(_params_of(item).get("dtype", "-")),
                config=_fixed_config(item), rerun=_rerun_of(item))


def _fixed_config(item: pytest.Item) -> str:
    """The case's configuration: its pytest parameters other than backend and dtype; the rest is drawn."""
    fixed = {k: v for k, v in _params_of(item).items() if k not in ("backend_name", "dtype")}
    return ",".join(f"{k}={v}" for k, v in fixed.items()) or "*"


JUNIT_PROPERTIES = ("property", "backend", "device", "dtype", "config")


def junit_properties(item: pytest.Item) -> list[tuple[str, str]]:
    """What a JUnit reader needs to group a case without parsing its id (pytest writes item.user_properties
    as the testcase's <properties>)."""
    p = _params_of(item)
    values = (_property_of(item), str(p.get("backend_name", "-")), item.config.getoption("--resconf-device"),
              str(p.get("dtype", "-")), _fixed_config(item))
    return list(zip(JUNIT_PROPERTIES, values))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _active(config):
        return
    for item in items:
        item.user_properties.extend(junit_properties(item))
    if config.getoption("--resconf-skip-xfails"):
        return
    filtered = bool(config.getoption("keyword") or config.getoption("markexpr"))
    entries = xfails.for_session(_NAME_OF, [Path(p) for p in config.getoption("--resconf-xfails")])
    names_of = lambda name: frozenset({name} | {s for s, n in _NAME_OF.items() if n == name})  # noqa: E731
    unmatched = xfails.apply(entries, items, _params_of, _property_of, names_of)
    collected = {_property_of(item) for item in items}
    unmatched = [e for e in unmatched if e.property in collected]  # a run of one file checks its own entries
    if unmatched and not filtered:  # with -k/-m, an entry may match only deselected cases
        lines = "\n".join(f"  {e.source}: {e.describe()}" for e in unmatched)
        raise pytest.UsageError(f"expected-failure entries that match no collected case (stale? remove them):\n{lines}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    state = item.stash.setdefault(OUTCOME, {"duration": 0.0})
    state["duration"] += report.duration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        state["report"] = report
    if report.when == "teardown":
        _write_row(item, state.get("report", report), state["duration"])
    return report


class CaseTimeout(BaseException):
    """Raised by the per-test timer. Not an Exception (nor pytest's Failed), so hypothesis does not take
    it for a failing example and replay it to shrink it (pytest-timeout's own signal handler calls
    pytest.fail, which hypothesis catches; the replay then hangs again, with no timer left)."""


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout's `--timeout`, its signal method, with an exception hypothesis lets through."""
    if (not _active(item.config) or settings.method != "signal"
            or threading.current_thread() is not threading.main_thread()):
        return None  # pytest-timeout's thread method: dumps stacks and ends the worker (resconf check resumes it)

    def expire(signum, frame):
        raise CaseTimeout(f"timed out after {settings.timeout:g} s (the per-test --timeout)")

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # pytest-timeout's cancel hook calls this
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


STRICT_XPASS = "[XPASS(strict)]"  # pytest's text for a strict xfail that passed (reported as failed)


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and str(report.longrepr).startswith(STRICT_XPASS):
        return "xpassed"
    return {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]


def _first_line(report: pytest.TestReport) -> str:
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if hasattr(report, "wasxfail"):
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
    params = _params_of(item)
    recorder = item.stash.get(RECORDER, None)
    outcome = _outcome(report)
    assert outcome in OUTCOMES
    counterexample, blob = _counterexample(report) if report.failed else ("", "")
    curves = recorder.curves if recorder else []
    row = ResultRow(
        run_id=item.config.getoption("--resconf-run-id") or "adhoc",
        backend=str(params.get("backend_name", "-")), device=item.config.getoption("--resconf-device"),
        dtype=str(params.get("dtype", "-")), property=_property_of(item), test=item.nodeid,
        config=_fixed_config(item), outcome=outcome,
        measured=recorder.measured if recorder else None, bound=recorder.bound if recorder else None,
        comparison=recorder.comparison if recorder else "", worst_config=recorder.worst_config if recorder else "",
        counterexample=counterexample, message=_first_line(report) if outcome != "passed" else "",
        rerun=_rerun_of(item), seed=blob, examples=recorder.examples if recorder else 0, duration_s=duration,
        curve_x=[c[1] for c in curves], curve_y=[c[2] for c in curves], curve_label=[c[0] for c in curves],
        suite_version=_suite_version(), backend_versions=_VERSIONS.get(str(params.get("backend_name")), "{}"),
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

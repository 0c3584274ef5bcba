"""The session's backends, loaded once before collection, and the fixtures that hand them to the properties."""
from __future__ import annotations

import functools
import json

import pytest

from resconf.backends import modes
from resconf.backends.base import Backend, DeviceUnavailable
from resconf.backends.registry import load_backend
from resconf.conformance import catalogue, phase_times, profiles
from resconf.conformance.baseline import Baselines
from resconf.conformance.home import HOME
from resconf.conformance.reference_cache import Cached, Store
from resconf.conformance.constants import WORKER_LOAD_FAILED, WORKER_NO_DEVICE, junit_suite_name
from resconf.conformance.output_dtypes import Checked
from resconf.conformance.plugin_active import active

# The session's backends by their own name (`name`), which keys test ids, rows and expected failures, and
# the spelling that selected each (a built-in name, an entry point, pkg.mod:Class), which rerun lines keep.
LOADED: dict[str, Backend] = {}
NAME_OF: dict[str, str] = {}  # spelling -> own name
SPELLING: dict[str, str] = {}  # own name -> spelling
VERSIONS: dict[str, str] = {}  # own name -> the backend_versions column


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load every backend up front: one that cannot load ends the run with one clear line, not a
    failure per test."""
    config = session.config
    if not active(config):
        return
    device = config.getoption("--resconf-device")
    for known in (LOADED, NAME_OF, SPELLING, VERSIONS):
        known.clear()
    for spelled in config.getoption("--resconf-backend") or ["numpy"]:
        try:
            backend = load_backend(spelled, device=device)
        except DeviceUnavailable as exc:
            pytest.exit(f"resconf: skipped: {exc}", returncode=WORKER_NO_DEVICE)
        except Exception as exc:  # noqa: BLE001  any import or constructor error ends the run the same way
            pytest.exit(f"backend {spelled!r} could not be loaded on {device}: {one_line(exc)}",
                        returncode=WORKER_LOAD_FAILED)
        try:  # read here, once: raising later, it would end the session as pytest's internal error
            backend.capabilities.dtypes
        except Exception as exc:  # noqa: BLE001
            pytest.exit(f"backend {spelled!r} could not be loaded on {device}: its capabilities raised "
                        f"{type(exc).__name__}: {one_line(exc)}", returncode=WORKER_LOAD_FAILED)
        name = own_name(backend)
        if name in LOADED and type(LOADED[name]) is not type(backend):
            raise pytest.UsageError(f"backends {SPELLING[name]!r} and {spelled!r} are both named {name!r} (their "
                                    "`name`), which keys test ids, results and expected failures: give each its own")
        NAME_OF[spelled] = name
        if name not in LOADED:  # one backend by two spellings runs once, under the first
            LOADED[name], SPELLING[name], VERSIONS[name] = backend, spelled, _versions(backend)
    if len(LOADED) == 1:
        [(name, spelled)] = SPELLING.items()
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
        return json.dumps({"error": f"versions() raised {type(exc).__name__}: {one_line(exc)}"})


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _name_junit_suite(config: pytest.Config, name: str, spelled: str) -> None:
    """resconf check names a worker's JUnit suite after the backend as spelled; it is renamed after the
    backend's own name, as its rows are (pytest's LogXML reads suite_name when it writes the file)."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None and xml.suite_name == junit_suite_name(spelled):
        xml.suite_name = junit_suite_name(name)


@pytest.fixture(scope="session")
def backend(backend_name: str):
    return LOADED[backend_name]


def unclaimed(backend: Backend, dtype: str, mode: str, property_id: str) -> str | None:
    """Why the backend does not run a case of this property in this dtype and mode, or None (the skip
    reason; conformance/selection.py asks it before running anything)."""
    if dtype not in backend.capabilities.dtypes:
        return f"{backend.name} on {backend.device} does not claim {dtype}"
    entry = catalogue.BY_ID.get(property_id)
    return modes.why_not(mode, backend.capabilities.modes, backend.name, backend.device, dtype,
                         entry.domains if entry else ())


@pytest.fixture
def subject(request: pytest.FixtureRequest, backend, dtype: str, mode: str):
    """The backend in the case's execution mode, after checking it claims the dtype and the mode for this
    property (else the case is skipped, and recorded so)."""
    marker = request.node.get_closest_marker("property")
    why = unclaimed(backend, dtype, mode, marker.args[0] if marker else "?")
    if why:
        pytest.skip(why)
    moded = backend if mode == modes.DEFAULT_MODE else backend.in_mode(mode)
    checked = Checked(moded)  # every result held to the dtype asked (conformance/output_dtypes.py)
    return phase_times.Timed(checked, "framework calls") if phase_times.ON else checked


@pytest.fixture(scope="session")
def references(pytestconfig: pytest.Config) -> Store | None:
    """Where the oracle's results and the baseline's draws are kept for every backend and later run
    (conformance/reference_cache.py): only in the derandomised profiles, whose cases recur."""
    if (pytestconfig.getoption("--resconf-no-reference-cache")
            or pytestconfig.getoption("--resconf-profile") not in profiles.DERANDOMISED):
        return None
    return Store(pytestconfig.invocation_params.dir / HOME / "cache" / "references")


@pytest.fixture(scope="session")
def oracle(references: Store | None):
    oracle = Cached(load_backend("numpy"), "oracle", references)  # on the CPU whatever --device says
    return phase_times.Timed(oracle, "oracle") if phase_times.ON else oracle


@pytest.fixture
def baseline(request: pytest.FixtureRequest, references: Store | None, mode: str):
    """The oracle's maths in the working dtype, another order (backends/oracle/controls.py), rounding where the
    case's execution mode rounds (backends/modes.py), in a few lazily run draws (conformance/baseline.py): it
    measures each comparison's error budget (conformance/budgets.py)."""
    return _baselines(references, mode, request.config.getoption("--resconf-device"))


@functools.cache
def _baselines(references: Store | None, mode: str, device: str) -> Baselines:
    return Baselines(store=references, mode=mode, target=device)

"""The suite's parameters: backend (by its own name), dtype and execution mode are pytest parameters, so an
expected failure can name one; each case's structure number; each case's JUnit properties."""
from __future__ import annotations

import zlib

import pytest

from resconf.backends.config import DTYPES
from resconf.backends.modes import DEFAULT_MODE
from resconf.conformance.plugin_active import active
from resconf.conformance.plugin_backends import NAME_OF
from resconf.conformance.plugin_cases import junit_properties, params_of
from resconf.conformance.plugin_options import selected_modes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not active(metafunc.config):
        return
    if "backend_name" in metafunc.fixturenames:  # by the backend's own name, whatever spelling selected it
        names = list(dict.fromkeys(NAME_OF.values()))
        metafunc.parametrize("backend_name", names, ids=names, scope="session")
    if "dtype" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("dtypes")
        dtypes = marker.args if marker else DTYPES
        if "mode" not in metafunc.fixturenames:
            metafunc.parametrize("dtype", dtypes)
            return
        pairs = [(d, m) for d in dtypes for m in selected_modes(metafunc.config)]
        metafunc.parametrize(("dtype", "mode"), pairs, ids=[case_id(d, m) for d, m in pairs])


def case_id(dtype: str, mode: str) -> str:
    """`float32` in eager mode, as before modes were an axis (ids, rerun lines and results keep their
    meaning); `float32-compile` in another mode."""
    return dtype if mode == DEFAULT_MODE else f"{dtype}-{mode}"


@pytest.fixture
def case(request: pytest.FixtureRequest) -> int:
    """A stable number per case, the backend left out: every backend gets the same fixed structure.
    It is len(DTYPES) * (the number of the case's family: its parameters but dtype and mode) + the dtype's
    index, so the dtypes of one family rotate through consecutive structures (hypothesis_helpers.fixed_structure)
    and every mode of a case draws the same structure as eager."""
    return case_number(request.node.originalname, params_of(request.node))


def case_number(function: str, params: dict) -> int:
    """The `case` fixture's value for a test function's case with these parameters."""
    family = sorted((k, str(v)) for k, v in params.items() if k not in ("backend_name", "dtype", "mode"))
    dtype = DTYPES.index(params["dtype"]) if params.get("dtype") in DTYPES else 0
    return len(DTYPES) * zlib.crc32(f"{function}{family}".encode()) + dtype


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not active(config):
        return
    for item in items:
        item.user_properties.extend(junit_properties(item))
        mode = params_of(item).get("mode")
        if mode == DEFAULT_MODE:  # its id leaves eager out; -k eager still selects it
            item.extra_keyword_matches.add(mode)

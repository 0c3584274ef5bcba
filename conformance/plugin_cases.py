"""What a collected case is, read from its pytest item: property, parameters, configuration, rerun line."""
from __future__ import annotations

import shlex

import pytest

from resconf.backends.modes import DEFAULT_MODE
from resconf.conformance.constants import JUNIT_PROPERTIES
from resconf.conformance.guard import Case
from resconf.conformance.plugin_backends import SPELLING


def property_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("property")
    return marker.args[0] if marker else "?"


def params_of(item: pytest.Item) -> dict:
    return dict(getattr(item, "callspec", None).params) if hasattr(item, "callspec") else {}


def subject_of(item: pytest.Item) -> str:
    p = params_of(item)
    return (f"backend={p.get('backend_name', '-')} device={item.config.getoption('--resconf-device')} "
            f"dtype={p.get('dtype', '-')} mode={mode_of(item)}")


def mode_of(item: pytest.Item) -> str:
    """The case's execution mode (backends/modes.py); eager for a case without the parameter."""
    return str(params_of(item).get("mode", DEFAULT_MODE))


def rerun_of(item: pytest.Item) -> str:
    """The case alone, with the backend as the user spelled it (its own name may not load it)."""
    name = str(params_of(item).get("backend_name", "numpy"))
    cfg = item.config
    mode = mode_of(item)
    return shlex.join(["resconf", "check", "--backend", SPELLING.get(name, name), "--device",
                       cfg.getoption("--resconf-device"), "--profile", cfg.getoption("--resconf-profile"),
                       *(["--mode", mode] if mode != DEFAULT_MODE else []), "-k", item.name])


def case_of(item: pytest.Item) -> Case:
    return Case(test=item.nodeid, property=property_of(item), dtype=str(params_of(item).get("dtype", "-")),
                config=fixed_config(item), rerun=rerun_of(item), mode=mode_of(item))


def fixed_config(item: pytest.Item) -> str:
    """The case's configuration: its pytest parameters other than backend, dtype and mode; the rest is drawn."""
    fixed = {k: v for k, v in params_of(item).items() if k not in ("backend_name", "dtype", "mode")}
    return ",".join(f"{k}={v}" for k, v in fixed.items()) or "*"


def junit_properties(item: pytest.Item) -> list[tuple[str, str]]:
    """What a JUnit reader needs to group a case without parsing its id (pytest writes item.user_properties
    as the testcase's <properties>)."""
    p = params_of(item)
    values = (property_of(item), str(p.get("backend_name", "-")), item.config.getoption("--resconf-device"),
              str(p.get("dtype", "-")), fixed_config(item), mode_of(item))
    return list(zip(JUNIT_PROPERTIES, values))

"""Whether a pytest session runs the conformance suite: the plugin loads in every pytest session of the
environment, and each of its hooks stands aside unless `active` says so."""
from __future__ import annotations

from pathlib import Path

import pytest

SUITE_DIR = Path(__file__).parent
ACTIVE = pytest.StashKey[bool]()


def runs_the_suite(config: pytest.Config) -> bool:
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


def active(config: pytest.Config) -> bool:
    return config.stash.get(ACTIVE, False)


@pytest.hookimpl(tryfirst=True)  # before the plugin's other pytest_configure hooks, which ask `active`
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "property(id): the SPEC property ID this test checks")
    config.addinivalue_line("markers", "dtypes(*names): dtypes this property runs in (default: all)")
    config.stash[ACTIVE] = runs_the_suite(config)

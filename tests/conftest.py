"""The project's own tests: a plain `pytest` leaves out the heavy ones (`pytest -m heavy` runs them).

Done here rather than with `-m` in pyproject's addopts, which would also reach the conformance workers
that the tests start inside this checkout (their coverage guard reads any -m as a subset run)."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("-m") or config.getoption("keyword"):
        return  # the user chose: `-m heavy`, `-k test_controls`
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("heavy")]

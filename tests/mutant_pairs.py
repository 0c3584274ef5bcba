"""A pytest plugin for the mutant runs (`-p tests.mutant_pairs`): keeps, for each mutant, only the cases of
the properties the catalogue says must flag it (RESCONF_TEST_MUTANT_PAIRS: {mutant class name: [property
IDs]}). One proof per (mutant, property) pair without running every mutant through every case; the
exhaustive run stays in the heavy tests."""
from __future__ import annotations

import json
import os

import pytest

from resconf.conformance.plugin_cases import params_of, property_of

ENV = "RESCONF_TEST_MUTANT_PAIRS"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    pairs = {mutant: set(ids) for mutant, ids in json.loads(os.environ[ENV]).items()}
    wanted = [property_of(item) in pairs.get(str(params_of(item).get("backend_name", "")).rsplit(":", 1)[-1], ())
              for item in items]
    dropped = [item for item, keep in zip(items, wanted) if not keep]
    items[:] = [item for item, keep in zip(items, wanted) if keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)

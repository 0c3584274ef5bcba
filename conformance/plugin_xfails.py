"""Expected failures applied to the collected cases (conformance/xfails.py); an entry that matches no
collected case of its property ends the run (stale)."""
from __future__ import annotations

from pathlib import Path

import pytest

from resconf.conformance import xfails
from resconf.conformance.plugin_active import active
from resconf.conformance.plugin_backends import LOADED, NAME_OF
from resconf.conformance.plugin_cases import params_of, property_of
from resconf.conformance.plugin_options import selected_modes


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not active(config) or config.getoption("--resconf-skip-xfails"):
        return
    filtered = bool(config.getoption("keyword") or config.getoption("markexpr"))
    inherits = {name: b.inherits_xfails for name, b in LOADED.items() if getattr(b, "inherits_xfails", None)}
    entries = xfails.for_session(NAME_OF, [Path(p) for p in config.getoption("--resconf-xfails")], inherits)
    names_of = lambda name: frozenset({name} | {s for s, n in NAME_OF.items() if n == name})  # noqa: E731
    unmatched = xfails.apply(entries, items, params_of, property_of, names_of)
    collected = {property_of(item) for item in items}
    modes = set(selected_modes(config))
    # a run of one file checks its own entries; a run in other modes does not check an entry of one mode
    unmatched = [e for e in unmatched if e.property in collected and (e.mode is None or e.mode in modes)]
    if unmatched and not filtered:  # with -k/-m, an entry may match only deselected cases
        lines = "\n".join(f"  {e.source}: {e.describe()}" for e in unmatched)
        raise pytest.UsageError(f"expected-failure entries that match no collected case (stale? remove them):\n{lines}")

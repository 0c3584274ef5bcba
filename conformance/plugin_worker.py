"""What a `resconf check` worker adds to the session: the gate's cases and its shard of them
(--resconf-cover, --resconf-shard; conformance/selection.py) and the
events file the supervisor's guard and timer follow (--resconf-events-jsonl, conformance/guard.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from resconf.conformance import gate, shards
from resconf.conformance.guard import EventWriter
from resconf.conformance.plugin_active import active
from resconf.conformance.plugin_backends import LOADED, NAME_OF
from resconf.conformance.plugin_cases import case_of
from resconf.conformance.selection import CaseSelector


def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    shard = config.getoption("--resconf-shard")
    try:
        chosen = shards.Shard.parse(shard) if shard else None
        given = config.getoption("--resconf-durations-file")
        durations = shards.load_durations(Path(given) if given else config.invocation_params.dir
                                          / shards.DURATIONS_FILE)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    strength = gate.strength(config.getoption("--resconf-cover"), config.getoption("--resconf-profile"))
    config.pluginmanager.register(CaseSelector(strength, chosen, durations), "resconf-selection")
    events = config.getoption("--resconf-events-jsonl")
    if events:
        already = config.getoption("--resconf-already-run")
        done = frozenset(Path(already).read_text().splitlines()) if already else frozenset()
        spelled = (config.getoption("--resconf-backend") or ["numpy"])[0]
        name = lambda: NAME_OF[spelled]  # noqa: E731  known once loaded (pytest_sessionstart)
        claimed = lambda: tuple(sorted(LOADED[name()].capabilities.dtypes))  # noqa: E731
        config.pluginmanager.register(EventWriter(Path(events), name, claimed, case_of, done), "resconf-events")

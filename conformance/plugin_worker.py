"""What a `resconf check` worker adds to the session: its shard of the cases (--resconf-shard) and the
events file the supervisor's guard and timer follow (--resconf-events-jsonl, conformance/guard.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from resconf.conformance import shards
from resconf.conformance.guard import EventWriter
from resconf.conformance.plugin_active import active
from resconf.conformance.plugin_backends import LOADED, NAME_OF
from resconf.conformance.plugin_cases import case_of


def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    shard = config.getoption("--resconf-shard")
    if shard:
        try:
            chosen = shards.Shard.parse(shard)
            given = config.getoption("--resconf-durations-file")
            durations = shards.load_durations(Path(given) if given else config.invocation_params.dir
                                              / shards.DURATIONS_FILE)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.pluginmanager.register(ShardSelector(chosen, durations), "resconf-shard")
    events = config.getoption("--resconf-events-jsonl")
    if events:
        already = config.getoption("--resconf-already-run")
        done = frozenset(Path(already).read_text().splitlines()) if already else frozenset()
        spelled = (config.getoption("--resconf-backend") or ["numpy"])[0]
        name = lambda: NAME_OF[spelled]  # noqa: E731  known once loaded (pytest_sessionstart)
        claimed = lambda: tuple(sorted(LOADED[name()].capabilities.dtypes))  # noqa: E731
        config.pluginmanager.register(EventWriter(Path(events), name, claimed, case_of, done), "resconf-events")


class ShardSelector:
    """A pytest plugin object: keeps this shard's cases. trylast, so it partitions what -k, -m and other
    plugins left selected; resconf's event writer (a wrapper) still records the whole collection."""

    def __init__(self, shard: shards.Shard, durations: dict[str, float]) -> None:
        self.shard, self.durations = shard, durations

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        keys = {item.nodeid: shards.duration_key(item.nodeid) for item in items}
        assigned = shards.partition(keys.values(), self.durations, self.shard.count)
        mine = [item for item in items if assigned[keys[item.nodeid]] == self.shard.index]
        others = [item for item in items if assigned[keys[item.nodeid]] != self.shard.index]
        items[:] = mine
        if others:
            config.hook.pytest_deselected(items=others)

"""Which collected cases a session runs, after -k and -m: the gate's covering (conformance/gate.py), then
this shard's part of it (conformance/shards.py). Both are deterministic, so every part and shard of a run
selects from the same covering."""
from __future__ import annotations

import pytest

from resconf.backends import modes
from resconf.backends.presets import PRESETS
from resconf.conformance import gate, shards
from resconf.conformance.catalogue import BY_ID, TENSOR_PARALLEL
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.plugin_backends import LOADED, unclaimed
from resconf.conformance.plugin_cases import params_of, property_of
from resconf.conformance.plugin_collection import case_number

OUTSIDE = ("backend_name",)  # a group is one backend's cases of one test function
RANKS = "tensor-parallel ranks"  # the shards' group of the cases that start rank processes


class CaseSelector:
    """A pytest plugin object. trylast: it thins what -k, -m and other plugins left selected, so a rerun
    line's `-k` always finds its case; resconf's event writer (a wrapper) still records the whole collection."""

    def __init__(self, strength: str, shard: shards.Shard | None, durations: dict[str, float]) -> None:
        self.strength, self.shard, self.durations = strength, shard, durations
        self.gated_out = 0

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        kept = self._covering(items)
        if self.shard:
            keys = {item.nodeid: shards.duration_key(item.nodeid) for item in kept}
            shared = {keys[item.nodeid]: RANKS for item in kept if TENSOR_PARALLEL in domains_of(item)}
            assigned = shards.partition(keys.values(), self.durations, self.shard.count, shared.get)
            kept = [item for item in kept if assigned[keys[item.nodeid]] == self.shard.index]
        left = set(map(id, kept))
        others = [item for item in items if id(item) not in left]
        items[:] = kept
        if others:
            config.hook.pytest_deselected(items=others)

    def _covering(self, items: list[pytest.Item]) -> list[pytest.Item]:
        """The gate's cases; a case the backend is known not to claim is kept (it skips at once, and its row
        says why), and only the cases it will run are thinned."""
        if self.strength == gate.ALL:
            return items
        groups: dict[tuple, list[pytest.Item]] = {}
        for item in items:
            if will_run(item):
                groups.setdefault((item.originalname, params_of(item).get("backend_name")), []).append(item)
        dropped = set()
        for group in groups.values():
            cases = [(axes_of(item), derived_of(item)) for item in group]
            cost = [self.durations.get(shards.duration_key(item.nodeid), shards.UNKNOWN_S) for item in group]
            chosen = set(gate.covering(cases, self.strength, cost))
            dropped |= {id(item) for i, item in enumerate(group) if i not in chosen}
        self.gated_out = len(dropped)
        return [item for item in items if id(item) not in dropped]


def domains_of(item: pytest.Item) -> tuple[str, ...]:
    found = BY_ID.get(property_of(item))
    return found.domains if found else ()


def axes_of(item: pytest.Item) -> gate.Axes:
    return {k: v for k, v in params_of(item).items() if k not in OUTSIDE}


def derived_of(item: pytest.Item) -> gate.Axes:
    """Values a case reaches that are not parameters: the layer preset a `layer=preset` case rotates to
    (hypothesis_helpers.fixed_structure), so that the gate keeps every preset in every property."""
    params = params_of(item)
    if params.get("layer") != hh.LAYERS[1]:
        return {}
    names = list(PRESETS)
    return {"preset": names[hh.rotation(case_number(item.originalname, params), len(names))]}


def will_run(item: pytest.Item) -> bool:
    """Whether the loaded backend claims what the case's parameters name (the checks its fixtures and
    requirements make first; conformance/plugin_backends.subject, conformance/requirements.py)."""
    params = params_of(item)
    backend = LOADED.get(params.get("backend_name"))
    if backend is None:
        return False
    caps = backend.capabilities
    dtype, mode = params.get("dtype"), params.get("mode", modes.DEFAULT_MODE)
    if dtype is not None and unclaimed(backend, dtype, mode, property_of(item)):
        return False
    claims = {"placement": caps.placements if caps.blocks else frozenset(), "norm": caps.norms,
              "branch": caps.branches}
    return all(params[k] in claimed for k, claimed in claims.items() if k in params)

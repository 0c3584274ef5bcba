"""Deterministic shards of the selected cases, balanced by recorded durations (as pytest-split does).

`resconf check --shard K/N` runs shard K of N, for CI matrices; `resconf check -n N` runs a backend's
shards side by side. Every shard computes the same partition from the same collection and the same
durations file, so the N shards are disjoint and together hold every selected case.
"""
from __future__ import annotations

import fcntl
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from resconf.conformance.outputs import write_text_atomic
from resconf.conformance.home import HOME

# In the folder resconf runs from, beside the results; commit it for CI matrices (docs/scaling.md).
DURATIONS_FILE = HOME / "durations.json"
UNKNOWN_S = 0.5  # the duration assumed for a case the file does not know (a new test)


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """"2/3" -> Shard(2, 3); anything else is a ValueError saying what is expected."""
        k, sep, n = text.partition("/")
        if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
            raise ValueError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 2/3")
        return cls(int(k), int(n))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def partition(nodeids: Iterable[str], durations: dict[str, float], count: int,
              group: Callable[[str], str | None] = lambda nodeid: None) -> dict[str, int]:
    """node id -> shard (1-based): longest first onto the least-loaded shard (ties: the lower shard), so
    the shards' expected times differ by at most one unit's duration. The cases `group` gives one name go
    to one shard as a unit: they share a per-process setup too costly to pay in every shard (the
    tensor-parallel cases' rank processes, a framework import each)."""
    units: dict[str, list[str]] = {}
    for nodeid in set(nodeids):
        units.setdefault(group(nodeid) or nodeid, []).append(nodeid)
    cost = {unit: sum(durations.get(i, UNKNOWN_S) for i in members) for unit, members in units.items()}
    load = [0.0] * count
    assigned = {}
    for unit in sorted(units, key=lambda u: (-cost[u], u)):
        shard = min(range(count), key=lambda s: (load[s], s))
        load[shard] += cost[unit]
        assigned.update(dict.fromkeys(units[unit], shard + 1))
    return assigned


def load_durations(path: Path | None) -> dict[str, float]:
    """The recorded case durations; an absent file means none (every case counts UNKNOWN_S), and so does a
    damaged one, with a warning: durations only balance the shards, so no run should fail over them."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object of node id -> seconds, got a {type(data).__name__}")
        return {str(k): _seconds(k, v) for k, v in data.items()}
    except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"resconf: ignoring damaged durations file {path}: {exc} (--store-durations rewrites it)",
              file=sys.stderr)
        return {}


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key!r}: expected a number of seconds, got {value!r}")
    return float(value)


def store_durations(path: Path, measured: dict[str, float]) -> None:
    """Merge newly measured durations into the file (sorted, so diffs stay readable). The read-merge-write
    holds a lock file beside it, so runs updating it at once keep each other's entries; the write goes
    through a unique temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        merged = {**load_durations(path), **{k: round(v, 3) for k, v in measured.items()}}
        write_text_atomic(path, json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def duration_key(nodeid: str) -> str:
    """A node id without its folder (`test_identity.py::test_x[...]`): the same whether the suite runs from
    a checkout or an installed copy, whose node ids differ by the path up to the suite."""
    path, sep, rest = nodeid.partition("::")
    return Path(path).name + sep + rest

"""Which cases a gating run keeps: every pair of parameter values, not every combination (pairwise testing).

A property's cases are the product of its parameters (dtype x placement x layer kind x ...). A merge gate
needs each value met, and each pair of values met together, to catch the faults a parameter or an
interaction of two causes; the whole product is the nightly run's. The selection is a greedy covering
array over the cases a backend will run (the classic AETG-style greedy: take the case meeting the most
pairs not yet met until every pair present in the product is met), per property function and backend,
deterministic, so every part and shard of a run computes the same one.

Strengths (`resconf check --cover`): `all` every case; `pairs` every pair of values; `each` every value
once (the fastest gate: every property, dtype, placement, layer kind and preset still runs).
"""
from __future__ import annotations

from itertools import combinations
from typing import Hashable, Sequence

ALL, PAIRS, EACH = "all", "pairs", "each"
STRENGTHS = (ALL, PAIRS, EACH)
MEANING = {PAIRS: "every pair of parameter values", EACH: "every parameter value", ALL: "every case"}
DEFAULT = {"ci": PAIRS, "smoke": PAIRS}  # by profile; the others run every case


def strength(cover: str | None, profile: str) -> str:
    """The strength a run uses: --cover's, else its profile's default."""
    return cover or DEFAULT.get(profile, ALL)


Axes = dict[str, Hashable]  # one case's parameter values (name -> value), the backend left out


def targets(axes: Axes, strength: str, single: Axes | None = None) -> set[tuple]:
    """What one case meets: each (name, value), and with `pairs` each two of them together. `single`:
    derived values (the preset a case rotates to) that are to be met once, never paired."""
    values = sorted((k, str(v)) for k, v in axes.items())
    met = {(v,) for v in values} | {(("~" + k, str(v)),) for k, v in (single or {}).items()}
    if strength == PAIRS:
        met |= set(combinations(values, 2))
    return met


def covering(cases: Sequence[tuple[Axes, Axes]], strength: str, cost: Sequence[float] | None = None) -> list[int]:
    """Indices of the cases to run, in their given order: greedy, the case meeting the most targets not
    yet met first (ties: the cheaper by `cost`, then the earlier), until the chosen cases meet every
    target the given ones meet."""
    if strength == ALL:
        return list(range(len(cases)))
    met_by = [targets(axes, strength, single) for axes, single in cases]
    cost = cost or [0.0] * len(cases)
    unmet = set().union(*met_by) if met_by else set()
    chosen: list[int] = []
    while unmet:
        best = max((i for i in range(len(cases)) if i not in chosen),
                   key=lambda i: (len(met_by[i] & unmet), -cost[i], -i))
        chosen.append(best)
        unmet -= met_by[best]
    return sorted(chosen)

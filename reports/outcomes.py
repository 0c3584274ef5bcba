"""How a group of results reads in one table cell: its outcome counts, and the colour they give it."""
from __future__ import annotations

from collections import Counter

from resconf.conformance.results import OUTCOMES

SHOWN_OUTCOMES = ("passed", "failed", "xfailed", "xpassed", "skipped")  # order of the counts in a cell
assert sorted(SHOWN_OUTCOMES) == sorted(OUTCOMES)


def cell_status(counts: Counter) -> str:
    """Red on any failure; amber on an expected failure (or its surprise pass); green when everything that ran
    passed (skips are a backend not claiming a feature); grey when nothing ran."""
    if counts["failed"]:
        return "fail"
    if counts["xfailed"] or counts["xpassed"]:
        return "xfail"
    if counts["passed"]:
        return "pass"
    return "skip" if counts["skipped"] else ""


def cell_text(counts: Counter) -> str:
    return ", ".join(f"{counts[o]} {o}" for o in SHOWN_OUTCOMES if counts[o]) or "-"

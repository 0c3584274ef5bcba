"""The report's sections in their fixed order: a section's number is its place here, spelled once, so a
section's title and a reference to it from another section cannot drift apart."""
from __future__ import annotations

MATRIX, THROUGHPUT, HISTORY, CURVES, METADATA, CATALOGUE = ORDER = (
    "Conformance matrix", "Throughput", "Over time", "The residual stream against theory", "Run metadata",
    "Property catalogue")


def number(name: str) -> int:
    return ORDER.index(name) + 1


def title(name: str) -> str:
    """"1. Conformance matrix": the heading the report shows."""
    return f"{number(name)}. {name}"

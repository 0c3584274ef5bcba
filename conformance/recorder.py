"""Assertion helpers that write the message and remember the worst case for the results row.

Every check says what was expected, what came, for which backend/dtype/configuration, and how to
rerun it. The recorder keeps the worst value over all hypothesis examples of a test: that value,
its bound and the configuration that produced it become the row's measured / bound / worst_config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import currently_in_test_context, note


@dataclass(repr=False)
class PropertyRecorder:
    property_id: str
    subject: str  # "backend=numpy device=cpu dtype=float32"
    rerun: str
    drawn: str = ""
    examples: int = 0
    worst_slack: float = -math.inf  # measured relative to bound: > 1 (or inf) means violated
    measured: float | None = None
    bound: float | None = None
    comparison: str = ""
    worst_config: str = ""
    curves: list[tuple[str, float, float]] = field(default_factory=list)

    def __repr__(self) -> str:  # hypothesis prints fixtures in its falsifying example: keep it short
        return f"<{self.property_id} {self.subject}>"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis' pretty printer asks for this first
        printer.text(repr(self))

    def example(self, **drawn: object) -> None:
        """Start one hypothesis example; its drawn configuration goes into failure messages."""
        self.examples += 1
        self.drawn = ",".join(f"{k}={v}" for k, v in drawn.items())
        if currently_in_test_context():  # a test without @given records its one example all the same
            note(f"drawn: {self.drawn}")

    def _record(self, slack: float, measured: float, bound: float, comparison: str) -> None:
        if slack > self.worst_slack or self.measured is None:
            self.worst_slack, self.measured, self.bound = slack, measured, bound
            self.comparison, self.worst_config = comparison, self.drawn

    def _fail(self, what: str, expected: str, got: str) -> None:
        raise AssertionError(f"{self.property_id} {what}: expected {expected}, got {got}\n"
                             f"  for {self.subject} {self.drawn}\n  rerun: {self.rerun}")

    def at_most(self, what: str, measured: float, bound: float) -> None:
        measured = float(measured)
        slack = math.inf if math.isnan(measured) else (measured / bound if bound > 0 else
                                                       (0.0 if measured <= 0 else math.inf))
        self._record(slack, measured, bound, "<=")
        if not measured <= bound:
            self._fail(what, f"<= {bound:.3g}", f"{measured:.3g}")

    def at_least(self, what: str, measured: float, bound: float) -> None:
        measured = float(measured)
        slack = math.inf if math.isnan(measured) or measured <= 0 else bound / measured
        self._record(slack, measured, bound, ">=")
        if not measured >= bound:
            self._fail(what, f">= {bound:.3g}", f"{measured:.3g}")

    def bitwise_equal(self, what: str, got: np.ndarray, expected: np.ndarray) -> None:
        """Elementwise ==, so -0.0 == +0.0 (the one difference IEEE x + 0 allows); NaN never matches."""
        if got.shape != expected.shape:
            self._fail(what, f"shape {expected.shape}", f"shape {got.shape}")
        bad = ~(got == expected)
        mismatches = int(bad.sum())
        self._record(math.inf if mismatches else 0.0, mismatches, 0.0, "==")
        if mismatches:
            i = np.unravel_index(int(np.argmax(bad)), bad.shape)
            self._fail(what, "bitwise equality", f"{mismatches} of {bad.size} elements differ, "
                       f"first at {tuple(int(k) for k in i)}: {got[i]!r} instead of {expected[i]!r}")

    def curve(self, label: str, xs, ys) -> None:
        """Record a curve (e.g. gradient ratio against depth) for the reports."""
        self.curves.extend((label, float(x), float(y)) for x, y in zip(xs, ys))


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref||, normwise; inf if got has a NaN/Inf where ref is finite."""
    if not np.all(np.isfinite(got)):
        return math.inf
    denom = float(np.linalg.norm(ref))
    diff = float(np.linalg.norm(got - ref))
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)

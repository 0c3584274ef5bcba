"""Assertion helpers that write the message and remember the worst case for the results row.

Every check says what was expected, what came, for which backend/dtype/configuration, and how to
rerun it. The recorder keeps the worst value over all hypothesis examples of a test: that value,
its bound and the configuration that produced it become the row's measured / bound / worst_config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from hypothesis import currently_in_test_context, note

from resconf.conformance import budgets


# The baseline runs only when the floor does not settle a comparison; calibration measures it always, so
# that the recorded measured/allowed is the full budget's, not the floor's (conformance/calibrate.py).
LAZY_BASELINE = True


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
    held_in: str | None = None  # the dtype the case's execution mode holds parameters in, if not the case's

    def parameter_dtype(self, dtype: str) -> str:
        """The dtype a parameter's gradient is a value of, whose unit roundoff its budget's floor counts in:
        the mode's (fp32_residual holds parameters in bfloat16, so their gradients end in one bfloat16
        rounding that a baseline draw may happen to round exactly), else the case's."""
        return self.held_in or dtype

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

    def at_most(self, what: str, measured: float, bound: float, why: str = "") -> None:
        measured = float(measured)
        slack = math.inf if math.isnan(measured) else (measured / bound if bound > 0 else
                                                       (0.0 if measured <= 0 else math.inf))
        self._record(slack, measured, bound, "<=")
        if not measured <= bound:
            self._fail(what, f"<= {bound:.3g}" + (f" = {why}" if why else ""), f"{measured:.3g}")

    def within_budget(self, what: str, got: np.ndarray, want: np.ndarray, base: Callable[[], list[np.ndarray]],
                      kind: str, dtype: str, depth: int = 1, reduction: int = 1, scale: float | None = None) -> None:
        """The backend's error on `what` (normwise, relative to ||want|| or to `scale`) within the budget
        that the baseline's error on the same comparison sets (conformance/budgets.py). `base` gives the
        baseline's draws of the same value (conformance/baseline.py); it runs only if the floor alone
        does not already settle the comparison."""
        err = relative_error(got, want, scale)
        b = budgets.budget(kind, dtype, 0.0, depth, reduction)
        if not err <= b.floor or not LAZY_BASELINE:
            b = budgets.budget(kind, dtype, baseline_error(base(), want, scale), depth, reduction)
        self.at_most(f"relative error of {what}", err, b.allowed, str(b))

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


def relative_error(got: np.ndarray, ref: np.ndarray, scale: float | None = None) -> float:
    """||got - ref|| / ||ref|| (or / scale), normwise; inf if got has a NaN/Inf where ref is finite."""
    if not np.all(np.isfinite(got)):
        return math.inf
    denom = _norm(ref) if scale is None else float(scale)
    diff = _norm(got - ref)
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)


def _norm(a: np.ndarray) -> float:
    """The 2-norm without overflow in the sum of squares (a difference of 1e154 squared is inf)."""
    a = np.asarray(a, dtype=np.float64)
    peak = float(np.max(np.abs(a), initial=0.0))
    if peak == 0.0 or not math.isfinite(peak):
        return peak
    return peak * float(np.linalg.norm(a / peak))


def baseline_error(draws: list[np.ndarray], want: np.ndarray, scale: float | None = None) -> float:
    """The RMS over the baseline's draws of each draw's error against the oracle's value. A draw that
    overflowed where the oracle did not tells nothing about rounding and is left out; with none left the
    error is 0, and the budget is its floor."""
    errors = [e for e in (relative_error(d, want, scale) for d in draws) if math.isfinite(e)]
    return math.sqrt(float(np.mean(np.square(errors)))) if errors else 0.0

"""`resconf calibrate`: a short randomised run of correct backends reports 0 false failures and the worst
measured/allowed ratio per (property, dtype); a broken backend's failures are counted and exit 1. The
nightly-sized run is benchmarks/calibrate.sh, not a test."""
from __future__ import annotations

import math

from resconf.backends.config import PLACEMENTS
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.calibrate import ratio, render, table
from resconf.conformance.test_agreement import ENCDEC_PLACEMENTS
from tests.test_check_cli import resconf


def test_correct_backends_calibrate_clean(tmp_path):
    proc = resconf("calibrate", "--backend", "numpy", "--backend", "control_pairwise", "--seeds", "3",
                   "-k", "test_forward_matches_oracle and float32", "--output", str(tmp_path / "c.parquet"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith(("numpy ", "control_pairwise "))
             and " XB-1 " in line]
    cases = len(PLACEMENTS) * len(hh.LAYERS) + len(ENCDEC_PLACEMENTS)  # each with 3 seeds
    assert {(cols[0], cols[3], cols[4], cols[5], cols[6]) for cols in lines} == {
        (name, "eager", str(cases), str(3 * cases), "0") for name in ("numpy", "control_pairwise")}, proc.stdout
    worst = {cols[0]: float(cols[8]) for cols in lines}
    assert worst["numpy"] == 0.0 and 0.0 < worst["control_pairwise"] < 1.0, "the oracle is exact; a control rounds"
    assert "false failures: 0" in proc.stdout


def test_a_broken_backend_calibrates_with_false_failures(tmp_path):
    proc = resconf("calibrate", "--backend", "tests.mutants:ResidualScaled", "--seeds", "2",
                   "-k", "test_forward_matches_oracle and float64 and pre and block", "--output", str(tmp_path / "c.parquet"))
    assert proc.returncode == 1, proc.stdout[-3000:]
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("ResidualScaled")
               and " XB-1 " in line)
    assert row[1:4] == ["XB-1", "float64", "eager"] and int(row[6]) == 1 and float(row[8]) > 1.0, proc.stdout


def _row(**kw) -> dict:
    base = dict(backend="b", property="XB-1", dtype="float32", outcome="passed", examples=3, measured=1.0,
                bound=4.0, comparison="<=", test="t::x", worst_config="")
    return {**base, **kw}


def test_the_table_counts_cases_and_keeps_the_worst_ratio():
    cells = table([_row(), _row(measured=3.0), _row(comparison=">=", measured=8.0, bound=2.0),
                   _row(outcome="skipped", measured=99.0), _row(outcome="xfailed", measured=99.0),
                   _row(comparison="==", measured=0.0, bound=0.0, property="XB-4")])
    cell = cells[("b", "XB-1", "float32", "eager")]
    assert (cell.cases, cell.examples, cell.false_failures, cell.expected_failures) == (4, 12, 0, 1)
    assert cell.worst == 0.75, "the >= row (bound 2 over measured 8) and the xfailed one do not count"
    assert cells[("b", "XB-4", "float32", "eager")].worst == -math.inf and "exact" in render(cells)
    assert ratio(_row(measured=1.0, bound=0.0)) == math.inf


def test_cases_the_harness_never_ran_are_not_false_failures():
    """A worker killed at its limit (or an interrupt) leaves 'not run' rows: calibration says so apart, since
    they say nothing about the budgets (they had been counted as false failures)."""
    cells = table([_row(), _row(outcome="failed", measured=None, bound=None, message="not run: the worker was "
                                "killed at its 900 s limit"), _row(outcome="failed", measured=5.0)])
    cell = cells[("b", "XB-1", "float32", "eager")]
    assert (cell.false_failures, cell.not_run) == (1, 1)


def test_each_mode_is_a_cell_of_its_own():
    cells = table([_row(measured=3.0), _row(mode="autocast", measured=1.0), _row(mode=None, measured=2.0)])
    assert cells[("b", "XB-1", "float32", "eager")].worst == 0.75, "a row without a mode is eager"
    assert cells[("b", "XB-1", "float32", "autocast")].worst == 0.25
    assert "autocast" in render(cells)

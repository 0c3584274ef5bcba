"""Fail fast, then explain: in the ci profile a failing case reports its first failing example at once (no
shrinking), with its rerun line; `--shrink` makes it minimal (conformance/profiles.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from resconf.conformance.profiles import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
CASE = "test_identity_block[SkipDropped-float64-pre-zero-block]"  # one case, where the dropped skip shows


def _check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, int, list[dict]]:
    calls, out = tmp_path / "calls.txt", tmp_path / "r.parquet"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RESCONF_TEST_CALLS": str(calls)}
    proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend",
                           "tests.counting_mutants:CountingSkipDropped", "-n", "1", "-k", CASE, "--output", str(out),
                           *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    rows = pq.read_table(out).to_pylist() if out.exists() else []
    return proc, len(calls.read_text().splitlines()) if calls.exists() else 0, rows


def test_ci_reports_the_first_failing_example_without_shrinking(tmp_path):
    proc, calls, rows = _check(tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert [r["outcome"] for r in rows] == ["failed"], rows
    # at most the profile's examples, plus hypothesis' replay of the failing one to report it
    assert calls <= EXAMPLES["ci"] + 1, f"{calls} calls: the failing case was shrunk"
    assert rows[0]["counterexample"] and "rerun: resconf check" in proc.stdout
    assert "add --shrink to its rerun line" in proc.stdout


def test_shrink_flag_shrinks(tmp_path):
    proc, calls, rows = _check(tmp_path, "--shrink")
    assert proc.returncode == 1 and [r["outcome"] for r in rows] == ["failed"], proc.stdout[-3000:]
    assert calls > EXAMPLES["ci"] + 1, f"only {calls} calls: --shrink did not shrink"
    assert "add --shrink" not in proc.stdout

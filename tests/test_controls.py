"""The positive controls (backends/oracle/controls.py) are correct backends that round differently on purpose
(other summation orders, FMA contraction, wider accumulation): each passes every property it claims,
so no allowance is tighter than legitimate rounding (conformance/budgets.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resconf.backends.oracle.controls import CONTROLS

ROOT = Path(__file__).resolve().parents[1]
IMPLEMENTED = {f"{f}-{i}" for f, n in (("ID", 4), ("GR", 4), ("VG", 4), ("XB", 7), ("BI", 5)) for i in range(1, n + 1)}


@pytest.mark.heavy
@pytest.mark.parametrize("name", [c.name for c in CONTROLS])
def test_control_passes_every_property(name, tmp_path):
    out = tmp_path / "r.parquet"
    proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", name,
                           "--profile", "smoke", "--cover", "all", "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = {r["property"] for r in pq.read_table(out).to_pylist() if r["outcome"] == "passed"}
    assert IMPLEMENTED <= passed, f"no passing rows for {sorted(IMPLEMENTED - passed)}"

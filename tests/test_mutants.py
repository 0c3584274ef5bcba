"""Every property can fail: each deliberately broken backend in tests/mutants.py is flagged by the
property IDs listed for it in EXPECTED. One pytest run covers the mutants that show in float64 (smoke
profile); a mutant that shows in another dtype only runs apart, on the cases named in SELECTION."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.mutants import EXPECTED, SELECTION

ROOT = Path(__file__).resolve().parents[1]
# the long-sequence and preset cases run only for the mutants that need them (SELECTION)
FLOAT64 = "(float64 or silent_downcast) and not long_sequence and not preset"


def _failed_properties(mutants: list[type], selection: str, rows: Path) -> dict[str, set[str]]:
    backends = [arg for m in mutants for arg in ("--resconf-backend", f"tests.mutants:{m.__name__}")]
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-p", "no:cacheprovider", "-q",
           "--resconf-profile", "smoke", "-k", selection, "-W", "ignore::RuntimeWarning",
           "--resconf-results-jsonl", str(rows),
           *backends]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, f"the mutant run should fail (status 1), got {proc.returncode}:\n{proc.stdout[-3000:]}"
    failed = defaultdict(set)
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        if row["outcome"] == "failed":
            failed[row["backend"].rsplit(":", 1)[-1]].add(row["property"])
    return failed


@pytest.fixture(scope="module")
def failed_properties(tmp_path_factory) -> dict[str, set[str]]:
    folder = tmp_path_factory.mktemp("mutants")
    failed = _failed_properties([m for m in EXPECTED if m not in SELECTION], FLOAT64, folder / "rows.jsonl")
    for number, selection in enumerate(sorted(set(SELECTION.values()))):  # one run per selection
        mutants = [m for m, s in SELECTION.items() if s == selection]
        failed.update(_failed_properties(mutants, selection, folder / f"selection-{number}.jsonl"))
    return failed


@pytest.mark.parametrize("mutant", list(EXPECTED), ids=lambda m: m.__name__)
def test_mutant_is_caught(mutant, failed_properties):
    missing = EXPECTED[mutant] - failed_properties[mutant.__name__]
    assert not missing, (f"{mutant.__name__} ({mutant.__doc__.strip()}) was not flagged by {sorted(missing)}; "
                         f"flagged by {sorted(failed_properties[mutant.__name__])}")


def test_every_property_has_a_mutant():
    """Each property ID of the catalogue implemented so far is proven sensitive by at least one mutant."""
    covered = set().union(*EXPECTED.values())
    implemented = {f"{family}-{i}" for family, n in (("ID", 4), ("GR", 4), ("VG", 4), ("XB", 5), ("BI", 5))
                   for i in range(1, n + 1)}
    assert implemented <= covered, f"properties without a mutant: {sorted(implemented - covered)}"

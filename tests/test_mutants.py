"""Every property can fail: each deliberately broken backend in tests/mutants.py is flagged by the
property IDs listed for it in EXPECTED. One pytest run covers all mutants (float64, smoke profile)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.mutants import EXPECTED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def failed_properties(tmp_path_factory) -> dict[str, set[str]]:
    rows = tmp_path_factory.mktemp("mutants") / "rows.jsonl"
    backends = [arg for m in EXPECTED for arg in ("--backend", f"tests.mutants:{m.__name__}")]
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-p", "no:cacheprovider", "-q",
           "--profile", "smoke", "-k", "float64 or silent_downcast", "-W", "ignore::RuntimeWarning", "--results-jsonl", str(rows),
           *backends]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, f"the mutant run should fail (status 1), got {proc.returncode}:\n{proc.stdout[-3000:]}"
    failed = defaultdict(set)
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        if row["outcome"] == "failed":
            failed[row["backend"].rsplit(":", 1)[-1]].add(row["property"])
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

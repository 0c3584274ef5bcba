"""TP-1 and TP-2 can fail: each broken tensor-parallel layer in tests/tp_mutants.py is flagged by the
properties EXPECTED names, the correct layer plugged in the same way passes, and a rank that hangs or
crashes fails its case with a message naming the rank, within the deadline, leaving no process behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from tests.tp_mutants import (EXPECTED, HANG_TIMEOUT_S, P2, SELECTION, Control, RankCrashes, RankHangs,
                              SequenceParallelControl)

CONTROLS = (Control, SequenceParallelControl)
SELECTION = {**SELECTION, **{c: P2 for c in CONTROLS}}

ROOT = Path(__file__).resolve().parents[1]
TAG = f"tpmut{uuid.uuid4().hex[:8]}"  # on every rank's command line (tp_launch.TAG_ENV)


def tagged_processes(tag: str) -> list[str]:
    """Command lines of live processes carrying `tag`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if tag in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def _rows(mutants: list[type], selection: str, rows: Path) -> dict[str, list[dict]]:
    backends = [arg for m in mutants for arg in ("--resconf-backend", f"tests.tp_mutants:{m.__name__}")]
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance" / "test_tensor_parallel.py"), "-o", "addopts=",
           "-p", "no:cacheprovider", "-q", "--resconf-profile", "smoke", "-k", selection,
           "--resconf-results-jsonl", str(rows),
           *backends]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RESCONF_TP_TAG": TAG}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-2000:]
    out = defaultdict(list)
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        out[row["backend"].rsplit(":", 1)[-1]].append(row)
    return out


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, list[dict]]:
    folder = tmp_path_factory.mktemp("tp_mutants")
    runs = defaultdict(list)
    for m, selection in SELECTION.items():
        runs[selection].append(m)
    out: dict[str, list[dict]] = {}
    for number, (selection, mutants) in enumerate(sorted(runs.items())):
        out.update(_rows(mutants, selection, folder / f"rows-{number}.jsonl"))
    return out


@pytest.mark.parametrize("mutant", list(EXPECTED), ids=lambda m: m.__name__)
def test_mutant_is_caught(mutant, rows):
    failed = {r["property"] for r in rows[mutant.__name__] if r["outcome"] == "failed"}
    missing = EXPECTED[mutant] - failed
    assert not missing, f"{mutant.__name__} ({mutant.__doc__.strip()}) was not flagged by {sorted(missing)}"


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: c.__name__)
def test_a_correct_layer_plugged_in_passes(control, rows):
    got = rows[control.__name__]
    assert got and {r["outcome"] for r in got} == {"passed"}, [(r["test"], r["message"]) for r in got]
    assert {r["property"] for r in got} == {"TP-1", "TP-2"}


def test_a_hung_rank_fails_its_case_in_time_naming_the_rank(rows):
    for row in rows[RankHangs.__name__]:
        assert "rank 1 stopped first" in row["message"] and f"within {HANG_TIMEOUT_S:g} s" in row["message"], row
        # the deadline, plus starting the ranks anew (the hung ones were killed) on a loaded 2-core machine
        assert row["duration_s"] < HANG_TIMEOUT_S + 60, row


def test_a_crashed_rank_fails_its_case_naming_the_rank(rows):
    for row in rows[RankCrashes.__name__]:
        assert "rank 1 was killed by SIGSEGV" in row["message"], row


def test_no_rank_outlives_the_run(rows):
    assert tagged_processes(Path(sys.argv[0]).name), "the scan should see this very process"
    assert rows[RankHangs.__name__] and not tagged_processes(TAG)


def test_every_tp_property_has_a_mutant():
    """The TP half of tests/test_mutants.py::test_every_property_has_a_mutant (which lists tests/mutants.py's)."""
    assert {"TP-1", "TP-2"} <= set().union(*EXPECTED.values())

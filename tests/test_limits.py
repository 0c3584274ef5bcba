"""`resconf check`'s limits: a worker killed at its limit leaves its other cases recorded as not run (never
passed, never missing); a backend that hangs while loading is killed at the load limit; a chatty backend's
logs stay capped. Each run is a few cases of tests/broken_backends.py on the smoke profile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from resconf.conformance import capped_log
from resconf.conformance.results import read_results
from tests.broken_backends import LeavesAChild

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "tests.broken_backends:"
FLOAT64 = "test_identity_block and float64 and not preset"  # pre-zero, rezero-zero, rezero-rezero: 3 cases


def resconf(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--profile", "smoke",
                           "-n", "1", "--output", "r.parquet", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_a_worker_killed_at_its_limit_reports_its_other_cases_not_run(tmp_path):
    """Slow takes 30 s a call in the rezero cases; the worker's limit is 15 s: the case it was in fails
    (killed at the limit), every case left has a row that says not run, and no GUARD row repeats it."""
    proc = resconf(tmp_path, "--backend", BROKEN + "Slow", "--timeout", "120", "--worker-timeout", "15",
                   "-k", FLOAT64)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = read_results(tmp_path / "r.parquet").to_pylist()
    by_case = {r["test"].split("-float64-")[-1]: r for r in rows}
    assert len(by_case) == len(rows) == 3, [(r["test"], r["message"]) for r in rows]
    killed = [r for r in rows if "the worker was killed at its 15 s limit" in r["message"]]
    assert killed and all(r["outcome"] == "failed" for r in killed)
    not_run = [r for r in rows if r["message"].startswith("not run: ")]
    assert not_run and all(r["outcome"] == "failed" and "rezero" in r["test"] for r in not_run), not_run
    assert by_case["rezero-zero-block]"]["outcome"] == by_case["rezero-rezero-block]"]["outcome"] == "failed"
    assert not [r for r in rows if r["property"] in ("GUARD", "RUN")]
    assert "selected cases not run: the worker was killed at its 15 s limit" in proc.stdout


def test_a_backend_that_hangs_while_loading_is_killed_at_the_load_limit(tmp_path):
    proc = resconf(tmp_path, "--backend", BROKEN + "LoadsForever", "--worker-timeout", "5", "-k", FLOAT64)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    [row] = read_results(tmp_path / "r.parquet").to_pylist()
    assert row["property"] == "RUN" and row["outcome"] == "failed"
    assert "had not loaded the backend and collected its cases after 5 s, so it was killed" in row["message"]
    assert "--worker-timeout" in row["message"] and "had not loaded the backend" in proc.stderr


def test_a_chatty_failing_backends_logs_stay_capped(tmp_path):
    """Chatty prints 5 MiB a call (about 150 MiB in all here) and fails in two of its cases: the run
    completes, and the worker log kept beside the results holds its head and tail, cut in between."""
    proc = resconf(tmp_path, "--backend", BROKEN + "Chatty", "-k", "test_identity_block and not preset",
                   "--cover", "all")  # every case, so that both failing ones run
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = read_results(tmp_path / "r.parquet").to_pylist()
    assert len(rows) == 12 and sum(r["outcome"] == "failed" for r in rows) == 2
    assert all("chatty and wrong" in r["message"] for r in rows if r["outcome"] == "failed")
    [log] = (tmp_path / "_r.logs").iterdir()
    cap = capped_log.HEAD_BYTES + capped_log.TAIL_BYTES + capped_log.CHUNK + 200
    assert log.stat().st_size <= cap
    text = log.read_text(errors="replace")
    assert "bytes of output cut here" in text and "2 failed, 10 passed" in text  # pytest's last line survives


def test_a_process_the_worker_left_behind_neither_holds_the_check_nor_outlives_it(tmp_path):
    proc = resconf(tmp_path, "--backend", BROKEN + "LeavesAChild", "-k", FLOAT64)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert len(read_results(tmp_path / "r.parquet")) == 3
    left = subprocess.run(["pgrep", "-f", " ".join(LeavesAChild.CHILD)], capture_output=True, text=True)
    assert not left.stdout, f"the worker's child outlived the check: {left.stdout}"

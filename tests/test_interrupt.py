"""Ctrl-C (SIGINT) or SIGTERM during `resconf check`: every worker stops at once, no other starts, what
finished is written (the cases left as not run), the summary printed, the exit status 130 / 143, no
traceback, and the run's temporary folder removed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resconf.conformance.results import read_results

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "tests.broken_backends:"
FLOAT64 = "test_identity_block and float64 and not preset"  # pre-zero, rezero-zero, rezero-rezero


def wait_for_slow_case(tmp: Path, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    """Until the second backend's worker (Slow, its folder 1.0) has started a case it takes 30 s over:
    numpy has finished by then, and so has Slow's first case."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        for events in tmp.glob("resconf-*/1.0/0.events.jsonl"):
            for line in events.read_text().splitlines():
                event = json.loads(line) if line.endswith("}") else {}
                if event.get("event") == "started" and "-rezero-" in event["case"]["test"]:
                    return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the slow case never started: {proc.communicate()}")


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_check_stops_and_writes_what_finished(tmp_path, sig, status):
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", "numpy", "--backend",
           BROKEN + "Slow", "--backend", BROKEN + "Raises", "--profile", "smoke", "-n", "1", "--timeout", "120",
           "--output", "r.parquet", "-k", FLOAT64]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_slow_case(tmp_path, proc)
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C does: to the whole foreground process group
    try:
        out, err = proc.communicate(timeout=20)  # the slow case alone would take 30 s more
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"resconf check went on after {sig.name}: {proc.communicate()}") from None
    assert proc.returncode == status, out[-3000:] + err[-3000:]
    assert "Traceback" not in err, err
    assert not list(tmp_path.glob("resconf-*")), "the run's temporary folder was left behind"
    rows = read_results(work / "r.parquet").to_pylist()
    numpy = [r for r in rows if r["backend"] == "numpy"]
    assert len(numpy) == 3 and {r["outcome"] for r in numpy} == {"passed"}
    slow = {r["test"].split("-float64-")[-1]: r for r in rows if "Slow" in r["backend"] or r["backend"] == "slow"}
    assert slow["pre-zero-block]"]["outcome"] == "passed"
    for case in ("rezero-zero-block]", "rezero-rezero-block]"):
        assert slow[case]["outcome"] == "failed"
        assert slow[case]["message"].startswith(f"not run: the check was interrupted ({sig.name})")
    [raises] = [r for r in rows if r["backend"] not in ("numpy", "slow") and "Slow" not in r["backend"]]
    assert raises["property"] == "RUN" and "before this backend started" in raises["message"]
    assert "checking backend tests.broken_backends:Raises" not in out
    assert "cases: 4 passed" in out  # the summary

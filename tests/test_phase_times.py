"""Where a check's time goes (tools/profile_check.py, conformance/phase_times.py): each worker writes its
phases, and the tool prints them as a table; without RESCONF_PHASE_TIMES nothing is written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "test_forward_matches_oracle and float64 and block"


def test_the_profile_names_every_phase(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "profile_check.py"), "--backend", "numpy", "-n", "1",
                           "-k", SUBSET], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "exit 0" in proc.stdout
    seconds = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in proc.stdout.splitlines()
               if line.startswith("| ") and not line.startswith(("| phase", "| ---"))}
    for phase in ("start: interpreter, pytest, resconf imports", "load: the backends and their frameworks", "collect",
                  "cases", "oracle", "framework calls", "recording the row", "workers"):
        assert phase in seconds, f"no row for {phase!r}:\n{proc.stdout}"
    assert seconds["cases"] > 0 and seconds["start: interpreter, pytest, resconf imports"] > 0, proc.stdout
    assert seconds["oracle"] + seconds["framework calls"] <= seconds["cases"], proc.stdout


def test_off_unless_asked(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RESCONF_PHASE_TIMES"}
    proc = subprocess.run([sys.executable, "-c", "from resconf.conformance import phase_times; print(phase_times.ON)"],
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "False"

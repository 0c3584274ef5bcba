"""Where a run's results came from: the code under test, the machine, and what narrowed the run.

Read once by `resconf check` and written into every row, so that rows from many machines and commits can
be told apart once merged into one dataset. Each probe is best effort: a value that cannot be found is "",
never an error (a check must not fail because `git` or `nvidia-smi` is missing).
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

PROBE_TIMEOUT_S = 10.0


def _output(cmd: list[str], cwd: Path) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def code_commit(folder: Path) -> str:
    """The git commit checked out in `folder` (the user's project), "-dirty" when tracked files differ."""
    commit = _output(["git", "rev-parse", "HEAD"], folder)
    if commit and _output(["git", "status", "--porcelain", "--untracked-files=no"], folder):
        commit += "-dirty"
    return commit


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas() -> str:
    """NumPy's BLAS, as its build configuration names it ("scipy-openblas 0.3.27")."""
    import numpy as np

    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError, AttributeError):  # NumPy < 1.26 prints instead of returning a dict
        return ""
    return " ".join(str(info.get(key, "")) for key in ("name", "version")).strip()


def gpu(device: str) -> str:
    """"NVIDIA H200, driver 560.35.03" (one entry per GPU, ';'-separated) when the run is on cuda."""
    if device != "cuda":
        return ""
    text = _output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], Path.cwd())
    return "; ".join(f"{name.strip()}, driver {driver.strip()}" for name, _, driver in
                     (line.partition(",") for line in text.splitlines() if line.strip()))


def run_provenance(folder: Path, device: str, profile: str, selection: str, shard: str = "") -> dict[str, str]:
    """The provenance fields of ResultRow for one run."""
    return {"profile": profile, "selection": selection, "shard": shard, "code_commit": code_commit(folder),
            "cpu_model": cpu_model(), "blas": blas(), "gpu": gpu(device)}

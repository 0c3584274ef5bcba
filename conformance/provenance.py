"""Where a run's results came from: the code under test, the suite that checked it, the CI job, the machine,
and what narrowed the run.

Read once by `resconf check` and written into every row, so that rows from many machines and commits can
be told apart once merged into one dataset. Each probe is best effort: a value that cannot be found is "",
never an error (a check must not fail because `git` or `nvidia-smi` is missing).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

PROBE_TIMEOUT_S = 10.0
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout for an editable install; site-packages/resconf else


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


def suite_version() -> str:
    """resconf's installed version, from git by setuptools-scm ("0.1.1.dev65+g017a79a"); "unknown" if not installed."""
    try:
        return metadata.version("resconf")
    except metadata.PackageNotFoundError:
        return "unknown"


def suite_commit() -> str:
    """resconf's own commit. Run from a git checkout (an editable install): its HEAD now ("-dirty" when edited),
    since the installed version dates from the install; else the commit pip recorded for a `pip install
    git+URL@REF`, or the one setuptools-scm put in the version (+g<hash>); "" when none is known (an install
    from a copy without .git)."""
    top = _output(["git", "rev-parse", "--show-toplevel"], SOURCE_ROOT)
    if top and Path(top).resolve() == SOURCE_ROOT:  # its own repository, not a venv that happens to sit in one
        return code_commit(SOURCE_ROOT)
    try:
        dist = metadata.distribution("resconf")
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        return ""
    if commit := origin.get("vcs_info", {}).get("commit_id"):
        return commit
    found = re.search(r"(?:^|\.)g([0-9a-f]{7,40})(?:\.|$)", dist.version.partition("+")[2])
    return found.group(1) if found else ""


def suite_text() -> str:
    """For `resconf --version`: "0.1.1.dev65+g017a79a (commit 017a79a...)"."""
    commit = suite_commit()
    return suite_version() + (f" (commit {commit})" if commit else "")


# Where a CI service says its job can be seen. GitHub Actions gives the parts of the run's URL.
CI_URL_VARIABLES = ("CI_JOB_URL", "BUILDKITE_BUILD_URL", "CIRCLE_BUILD_URL", "BUILD_URL")


def ci_job(env: dict[str, str] | None = None) -> str:
    """The URL of the CI job this runs in (GitHub Actions, GitLab, Buildkite, CircleCI, Jenkins and others
    that set BUILD_URL); "" outside CI or when the service names none."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        url = f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
        attempt = env.get("GITHUB_RUN_ATTEMPT", "")
        return url + (f"/attempts/{attempt}" if attempt else "")
    return next((env[name] for name in CI_URL_VARIABLES if env.get(name)), "")


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
    return {"suite_version": suite_version(), "profile": profile, "selection": selection, "shard": shard,
            "code_commit": code_commit(folder), "suite_commit": suite_commit(), "ci_job": ci_job(),
            "cpu_model": cpu_model(), "blas": blas(), "gpu": gpu(device)}

"""A user's project with its own top-level `backends/` package (common in ML repos) runs its backend through
both entry points, from its own folder: resconf's packages live under `resconf.*`, so nothing is shadowed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = "backends.adapter:UserReference"
FAST = "test_identity_block and float64 and pre and not preset"
USER_ADAPTER = '''
from resconf.backends.oracle.numpy_ref import NumpyReference


class UserReference(NumpyReference):
    """The oracle under another name: stands for the user's own backend."""

    name = "user_reference"
'''


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "backends").mkdir()
    (tmp_path / "backends" / "__init__.py").write_text('"""The user\'s own backends package."""\n')
    (tmp_path / "backends" / "adapter.py").write_text(USER_ADAPTER)
    assert ROOT not in tmp_path.parents
    return tmp_path


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH as the user's shell would have it for their project; resconf itself comes from the venv.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


def test_resconf_check_runs_the_users_backend(project):
    run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", ADAPTER, "-k", FAST,
         "--output", "r.parquet"], project)
    rows = pq.read_table(project / "r.parquet").to_pylist()
    # Hypothesis' own files (its constants cache) go under .resconf/ too, like all resconf writes.
    assert not (project / ".hypothesis").exists() and (project / ".resconf" / "hypothesis").is_dir()
    assert [(r["backend"], r["property"], r["outcome"]) for r in rows] == [("user_reference", "ID-1", "passed")]


def test_pytest_pyargs_runs_the_users_backend(project):
    run([sys.executable, "-m", "pytest", "--pyargs", "resconf.conformance", "--resconf-backend", ADAPTER,
         "-k", FAST,
         "--resconf-results-jsonl", "rows.jsonl", "-p", "no:cacheprovider", "-q"], project)
    rows = [json.loads(line) for line in (project / "rows.jsonl").read_text().splitlines()]
    assert not (project / ".hypothesis").exists(), "Hypothesis' files go under .resconf/ too"
    assert [(r["backend"], r["property"], r["outcome"]) for r in rows] == [("user_reference", "ID-1", "passed")]


USER_CONFTEST = '''
def pytest_addoption(parser):
    # Options a kernel repo's own conftest commonly defines: resconf's plugin must not take these names.
    parser.addoption("--device", default="cpu")
    parser.addoption("--backend", default="mine")
    parser.addoption("--profile", action="store_true")
'''
USER_TEST = '''
def test_own(request):
    assert request.config.getoption("--device") == "cuda"
    assert request.config.getoption("--backend") == "mine"
'''


def test_a_users_own_tests_run_with_resconf_installed(tmp_path):
    """resconf's pytest11 plugin loads in every pytest session of the environment: its options are
    prefixed (--resconf-*), so a project defining --device or --backend itself still starts."""
    (tmp_path / "conftest.py").write_text(USER_CONFTEST)
    (tmp_path / "test_own.py").write_text(USER_TEST)
    proc = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--device", "cuda"], tmp_path)
    assert "1 passed" in proc.stdout
    assert not (tmp_path / ".hypothesis").exists() and not (tmp_path / "reports").exists()

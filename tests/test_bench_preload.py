"""benchmarks/preload.py: asv's forkserver imports the grid's frameworks once, and nothing else does."""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import preload

REPO = Path(__file__).resolve().parents[1]
SERVER_ARGV = ["asv_runner/benchmark.py", "run_server", "benchmarks", "/tmp/socket"]
INSTALLED = [m for m in ("torch", "jax", "numba") if importlib.util.find_spec(m) is not None]


def test_only_the_forkserver_preloads_and_the_variable_turns_it_off():
    assert preload.wanted(SERVER_ARGV, {})
    assert preload.wanted(SERVER_ARGV, {preload.ENV: "1"})
    assert not preload.wanted(SERVER_ARGV, {preload.ENV: "0"})
    for command in ("discover", "check", "run", "timing"):  # asv_runner's other commands import the suite too
        assert not preload.wanted(["asv_runner/benchmark.py", command, "benchmarks"], {})
    assert not preload.wanted(["-c"], {})  # a test, a tool, a user's script
    with pytest.raises(ValueError, match=r"RESCONF_BENCH_PRELOAD='yes': expected 1 .* or 0"):
        preload.wanted(SERVER_ARGV, {preload.ENV: "yes"})


def _import_suite_as(argv: list[str]) -> dict:
    """Import the suite in a new interpreter whose sys.argv is `argv`: the frameworks loaded and the threads
    running before and after (numpy's BLAS starts its own when imported)."""
    code = (f"import json, os, sys\nsys.argv = {argv!r}\nimport numpy\n"
            f"before = len(os.listdir('/proc/self/task'))\n"
            f"from benchmarks import common\n"
            f"print(json.dumps({{'loaded': [m for m in {INSTALLED!r} if m in sys.modules], 'before': before,"
            f" 'after': len(os.listdir('/proc/self/task')), 'preloaded': list(common.PRELOADED)}}))")
    env = {k: v for k, v in os.environ.items() if k != preload.ENV}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not INSTALLED, reason="no framework installed to preload")
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counting threads needs Linux's /proc")
def test_the_forkserver_imports_the_installed_frameworks_and_starts_no_thread():
    server = _import_suite_as(SERVER_ARGV)
    assert server["loaded"] == INSTALLED, server
    assert set(INSTALLED) <= {name.partition(".")[0] for name in server["preloaded"]}
    # A thread running when the server forks would be missing in every combination (fork copies one thread):
    # a framework whose import started one would make the forked combinations hang or crash.
    assert server["after"] == server["before"], f"importing the frameworks started threads: {server}"
    # anywhere else the suite imports no framework: tests/test_bench_export.py


def test_asv_still_starts_its_forkserver_with_the_run_server_command():
    runner = pytest.importorskip("asv.runner")
    assert "'run_server'" in inspect.getsource(runner), (
        "asv no longer starts its forkserver as `run_server`: benchmarks/preload.py's in_forkserver must follow")

"""The supervisor's own logic, without running a check: the worker's environment, the progress line, the
worker limits and the log cap."""
from __future__ import annotations

import io

from resconf.conformance import progress, worker
from resconf.conformance.options import CheckOptions

JAX_CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE",
                  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def test_our_jax_cache_is_limited_and_the_users_is_left_alone(monkeypatch, tmp_path):
    for var in JAX_CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    ours = worker.worker_env("ci", "cpu")
    if "JAX_COMPILATION_CACHE_DIR" in ours:  # only with filelock installed (the lock the limit turns on needs it)
        assert ours["JAX_COMPILATION_CACHE_MAX_SIZE"] == str(worker.JAX_CACHE_BYTES)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    assert not set(JAX_CACHE_VARS) & set(worker.worker_defaults("ci", "cpu"))
    env = worker.worker_env("ci", "cpu")  # what run_worker starts the worker with
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    assert not {"JAX_COMPILATION_CACHE_MAX_SIZE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"} & set(env)


def test_eta_waits_until_every_worker_has_collected():
    """A worker that has not started or not collected has an unknown total: the ETA is '?', not the time
    the others need (it said 14 s with 2 minutes of jax left)."""
    live = progress.Progress(io.StringIO(), expect=["numpy", "jax 1/2", "jax 2/2"])
    numpy = live.worker("numpy")
    numpy.started, numpy.total, numpy.done = True, 40, 30
    assert "ETA ?" in live.line() and "jax" not in live.line()  # jax's parts have not started: not shown
    for label in ("jax 1/2", "jax 2/2"):
        jax = live.worker(label)
        jax.started, jax.total, jax.done = True, 100, 10
    assert "ETA ?" not in live.line() and "ETA " in live.line() and "jax 1/2 10/100" in live.line()


def test_a_worker_that_ended_without_collecting_does_not_hide_the_eta():
    live = progress.Progress(io.StringIO())
    broken = live.worker("broken")  # failed to load: finished, its total never known
    broken.started, broken.finished = True, True
    numpy = live.worker("numpy")
    numpy.started, numpy.total, numpy.done = True, 40, 10
    assert "ETA " in live.line() and "ETA ?" not in live.line()

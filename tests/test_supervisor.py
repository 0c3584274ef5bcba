"""The supervisor's own logic, without running a check: the worker's environment, the progress line, the
worker limits and the log cap."""
from __future__ import annotations

import io

from resconf.conformance import capped_log, progress, worker
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


def test_eta_is_a_floor_until_every_worker_has_collected():
    """A worker that has not started or not collected has an unknown total: the ETA is a floor ('> N s'),
    not the time the others need shown as if complete (it said 14 s with 2 minutes of jax left)."""
    live = progress.Progress(io.StringIO(), expect=["numpy", "jax 1/2", "jax 2/2"])
    numpy = live.worker("numpy")
    numpy.started, numpy.total, numpy.done = True, 40, 30
    assert "ETA > " in live.line() and "jax" not in live.line()  # jax's parts have not started: not shown
    for label in ("jax 1/2", "jax 2/2"):
        jax = live.worker(label)
        jax.started, jax.total, jax.done = True, 100, 10
    assert "ETA > " not in live.line() and "ETA " in live.line() and "jax 1/2 10/100" in live.line()


def test_a_worker_that_ended_without_collecting_does_not_hide_the_eta():
    live = progress.Progress(io.StringIO())
    broken = live.worker("broken")  # failed to load: finished, its total never known
    broken.started, broken.finished = True, True
    numpy = live.worker("numpy")
    numpy.started, numpy.total, numpy.done = True, 40, 10
    assert "ETA " in live.line() and "ETA > " not in live.line()


def test_the_worker_limit_grows_with_the_cases_and_the_profile():
    ci = CheckOptions(backends=("numpy",))
    assert ci.load_limit_s == ci.hung_after_s == 900  # the default --timeout of 600 s, plus its margin
    assert ci.worker_limit_s(None) == ci.load_limit_s  # before it has collected
    assert ci.worker_limit_s(600) == ci.load_limit_s + 600 * ci.case_allowance_s > 1800
    nightly = CheckOptions(backends=("numpy",), profile="nightly")
    assert nightly.case_allowance_s > ci.case_allowance_s
    assert CheckOptions(backends=("numpy",), max_examples=1000).case_allowance_s == ci.hung_after_s  # capped
    quick = CheckOptions(backends=("numpy",), test_timeout_s=2)  # a small --timeout: a hung load ends soon
    assert quick.load_limit_s == 60 and quick.case_allowance_s == quick.hung_after_s == 4
    fixed = CheckOptions(backends=("numpy",), worker_timeout_s=15)  # --worker-timeout: the same limit throughout
    assert fixed.worker_limit_s(None) == fixed.worker_limit_s(600) == 15


def test_a_capped_log_keeps_its_head_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(capped_log, "HEAD_BYTES", 100)
    monkeypatch.setattr(capped_log, "TAIL_BYTES", 100)
    log = capped_log.CappedLog(tmp_path / "log")
    for i in range(1000):
        log.write(f"line {i:04d}\n".encode())
    log.close()
    text = (tmp_path / "log").read_text()
    assert text.startswith("line 0000\n") and text.endswith("line 0999\n")
    assert len(text) < 400 and "bytes of output cut here" in text
    assert log.last(10) == "line 0999\n"

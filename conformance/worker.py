"""A `resconf check` worker: one pytest process per backend, watched from outside.

The supervisor follows the worker's events file to know which case is running, kills a case that
outlives the per-test timeout where no signal reaches it, and kills the whole worker at its deadline.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from resconf.conformance import profiles
from resconf.conformance.capped_log import CappedLog
from resconf.conformance.constants import junit_suite_name
from resconf.conformance.interrupt import Interrupt, kill_group
from resconf.conformance.options import CheckOptions
from resconf.conformance.progress import WorkerProgress

SUITE_DIR = Path(__file__).parent
POLL_S = 0.2  # how often the supervisor looks at a running worker
PIPE_WAIT_S = 5.0  # how long the rest of a worker's output may take to arrive after it ended
PYTEST_STATUS = {2: "pytest was interrupted (errors during collection?)", 3: "pytest hit an internal error",
                 4: "pytest usage error",
                 5: "no test ran (pytest exit status 5: nothing collected, or -k/-m deselected everything)"}


JAX_CACHE_BYTES = 4 * 2**30


def worker_defaults(profile: str, device: str = "cpu") -> dict[str, str]:
    """Environment defaults for a worker; the user's own settings win.

    The suite's tensors are tiny: one intra-op thread is faster than two fighting over them, and
    deterministic. JAX compiles every new (configuration, shape, dtype) once, about 0.2-1 s each on this
    class of machine; the derandomised profiles draw the same examples every run, so JAX's persistent
    compile cache turns a rerun's compiles into loads. A size limit turns on the cache's file lock (JAX
    writes entries unlocked when unlimited), which parallel workers sharing it need. The randomised profiles
    leave the cache off: their programs rarely recur, and a nightly run with it on crashed twice in JAX's
    executable (de)serialisation (docs/findings.md). A cache the user set up (JAX_COMPILATION_CACHE_DIR) is
    theirs: we set none of its variables, so no limit of ours makes JAX evict their entries. Triton has no
    CPU target: on the CPU its kernels (ours, Liger's) run in Triton's interpreter, which must be on before
    triton is first imported."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    users_cache = "JAX_COMPILATION_CACHE_DIR" in os.environ
    if profile in profiles.DERANDOMISED and not users_cache and importlib.util.find_spec("filelock") is not None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resconf" / "jax"
        env |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                "JAX_COMPILATION_CACHE_MAX_SIZE": str(JAX_CACHE_BYTES)}
    return env


def worker_env(profile: str, device: str) -> dict[str, str]:
    """The environment a worker starts with: our defaults under the user's own settings."""
    return {**worker_defaults(profile, device), **os.environ, "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class WorkerExit:
    status: int | None  # exit status; negative: killed by that signal
    killed_for: str | None  # why the supervisor killed it: "hung", "load timeout", "worker timeout", "interrupted"
    tail: str  # the end of its output
    limit_s: float = 0.0  # the limit it ran under when it ended
    interrupt: str = ""  # the signal that interrupted the check ("SIGINT"), if one did


def worker_command(name: str, opts: CheckOptions, run_id: str, rows: Path, events: Path, junit: Path,
                   already: Path | None, shard: str | None = None) -> list[str]:
    # -o addopts=: the ini file pytest finds (this repo's, or the user's project's) must not change how a
    # worker runs; e.g. `-n auto` there would hand the cases to xdist and blind the crash attribution.
    # --capture=no: a backend's output streams to the supervisor, which keeps its head and tail
    # (conformance/capped_log.py); captured, pytest holds a failing case's whole output in memory.
    # --assert=plain: the suite states its checks through `prop`, not bare asserts, and rewriting every module
    # of the package costs a worker 0.8 s at start where no bytecode is cached (PYTHONDONTWRITEBYTECODE).
    cmd = [sys.executable, "-m", "pytest", str(SUITE_DIR), "-o", "addopts=", "-p", "no:cacheprovider", "-q",
           "--assert=plain",
           "--no-header", "-rN", "--capture=no", "--resconf-backend", name, "--resconf-device", opts.device,
           "--resconf-profile", opts.profile, "--resconf-results-jsonl", str(rows),
           "--resconf-events-jsonl", str(events), "--resconf-run-id", run_id, "--junitxml", str(junit),
           "-o", f"junit_suite_name={junit_suite_name(name)}",
           f"--timeout={opts.test_timeout_s:g}", "-W", "ignore::RuntimeWarning"]
    cmd += [arg for mode in opts.modes for arg in ("--resconf-mode", mode)]
    cmd += ["--resconf-already-run", str(already)] if already else []
    cmd += ["--resconf-shard", shard] if shard else []
    cmd += ["--resconf-durations-file", str(opts.durations_file)] if opts.durations_file else []
    cmd += ["--resconf-max-examples", str(opts.max_examples)] if opts.max_examples else []
    cmd += ["--resconf-shrink"] if opts.shrink else []
    cmd += ["--resconf-cover", opts.cover] if opts.cover else []
    cmd += [] if opts.reference_cache else ["--resconf-no-reference-cache"]
    cmd += [arg for path in opts.xfails for arg in ("--resconf-xfails", str(path))]
    cmd += ["--resconf-skip-xfails"] if opts.skip_xfails else []
    return cmd + list(opts.pytest_args)


def run_worker(cmd: list[str], log: Path, events: Path, opts: CheckOptions, progress: WorkerProgress | None = None,
               stop: Interrupt | None = None, resumed: int = 0) -> WorkerExit:
    """Run a worker to its end, killing its process group if one case outlives opts.hung_after_s, the
    worker its limit (opts.worker_limit_s of the `resumed`-fewer cases it collected), or the check is
    interrupted (`stop`)."""
    watch = _CaseWatch(events, progress or WorkerProgress("-"))
    stop = stop or Interrupt()
    killed_for = None
    out = CappedLog(log)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            process_group=0, preexec_fn=_die_with_parent, env=worker_env(opts.profile, opts.device))
    pump = out.follow(proc.stdout)
    stop.add(proc)
    try:
        while True:
            try:
                status = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            running_since = watch.running_since()
            now = time.monotonic()
            limit = opts.worker_limit_s(None if watch.cases is None else watch.cases - resumed)
            if running_since is not None and now - running_since > opts.hung_after_s:
                killed_for = "hung"
            elif now - started > limit:
                killed_for = "worker timeout" if watch.cases is not None else "load timeout"
            if killed_for:
                kill_group(proc)
                status = proc.wait()
                break
    finally:
        stop.discard(proc)
    if stop.signum and status is not None and status < 0 and killed_for is None:
        killed_for = "interrupted"
    _end_leftovers(proc)
    pump.join(timeout=PIPE_WAIT_S)  # still open: held by a process that left the worker's group
    out.close()
    limit = opts.worker_limit_s(None if watch.cases is None else watch.cases - resumed)
    return WorkerExit(status, killed_for, out.last(4000), limit, stop.name)


class _CaseWatch:
    """Follows a worker's events file as it grows: since when (on our clock) the current case runs, and
    the worker's progress."""

    def __init__(self, path: Path, progress: WorkerProgress) -> None:
        self.path, self.offset, self.partial, self.since = path, 0, b"", None
        self.progress = progress
        self.cases: int | None = None  # how many it selected, once it has collected

    def running_since(self) -> float | None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return None
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            event = json.loads(line)
            kind = event.get("event")
            if kind == "collected":
                self.cases = self.progress.total = len(event["manifest"]["selected"])
            elif kind == "started":
                self.since = time.monotonic()
                self.progress.running = event["case"]["property"]
            elif kind == "ended":
                self.since = None
                self.progress.done += 1
                self.progress.running = ""
        return self.since


def _end_leftovers(proc: subprocess.Popen) -> None:
    """Kill what the worker started and left running (still in its process group, the group keeps the
    worker's pid from reuse): it would hold the output pipe open, and outlive the check."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the worker, before exec (Linux): if `resconf check` is killed, its worker is killed too,
    instead of running on as an orphan."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def how_it_died(exit: WorkerExit, opts: CheckOptions) -> str:
    if exit.killed_for == "hung":
        return (f"timed out: no result {opts.hung_after_s:g} s after it started (the per-test --timeout of "
                f"{opts.test_timeout_s:g} s could not interrupt it), so the worker was killed")
    if exit.killed_for == "worker timeout":
        return f"the worker was killed at its {exit.limit_s:.0f} s limit ({LIMIT_HELP})"
    if exit.killed_for == "load timeout":
        return (f"the worker had not loaded the backend and collected its cases after {exit.limit_s:.0f} s, "
                f"so it was killed ({LIMIT_HELP})")
    if exit.killed_for == "interrupted":
        return f"not run: the check was interrupted ({exit.interrupt})"
    if exit.status is not None and exit.status < 0:
        return f"the worker was killed by {signal.Signals(-exit.status).name}"
    return f"the worker exited with status {exit.status}"


LIMIT_HELP = "--worker-timeout S sets it; docs/scaling.md"


def pytest_failure(exit: WorkerExit) -> str:
    """A worker's session ended in order but not with results: say why, with pytest's own error text."""
    what = PYTEST_STATUS.get(exit.status, f"pytest exited with status {exit.status}")
    lines = exit.tail.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(("ERROR", "E  "))), len(lines) - 1)
    detail = " | ".join(line.strip().removeprefix("ERROR: ") for line in lines[start:] if line.strip())
    return f"{what}: {detail}"[:1500]

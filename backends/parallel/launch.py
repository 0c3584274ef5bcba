"""Start P rank processes (torchrun-style environment), hand them jobs, and never leave one behind.

A `Launch` names the program every rank runs: a `module:function` returning `handle(job) -> result`, called
once per job. The ranks of a launch are one process group of their own, started once and kept for the
session (process start-up, ~2 s for torch, dominates a small job); `run` sends each rank its job and waits
for every answer up to a deadline. A rank that raises, dies or does not answer fails the call with a message
naming it, and the whole group is killed (SIGKILL to the group), as it is on KeyboardInterrupt, on any other
exception in the waiting process, and at exit. A rank also dies with its parent (PR_SET_PDEATHSIG), so a
SIGKILLed run leaves no orphan blocked in a collective.

The wire: one line per message. The parent writes `job PATH` on a rank's stdin (the pickled job sits in a
file, so a rank that stopped reading can never block the parent); the rank answers `ready` once, then
`done PATH` or `error PATH` per job, and `at N` as it enters its N-th collective (`progress()`), which
says on a hang which rank stopped first. Everything a rank prints goes to its log.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib
import os
import pickle
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 180.0  # importing a framework and joining the group, on a loaded 2-core machine
JOB_TIMEOUT_S = 120.0  # one job: a JAX compile of a sharded stack included
PARENT_ENV = "RESCONF_TP_PARENT"
TAG_ENV = "RESCONF_TP_TAG"  # set it to find a run's ranks by their command line (tests/test_tensor_parallel.py)


class LaunchFailed(BaseException):
    """The ranks of a launch failed; they have been killed. Not an Exception, so hypothesis neither replays
    nor shrinks the example (each try would start the ranks anew, or wait out the deadline again: the
    failure is the launch's, not the drawn values'); pytest still records the case as failed."""


class RankFailed(LaunchFailed):
    """A rank raised or died."""


class RanksHung(LaunchFailed):
    """A rank did not answer within the deadline."""


@dataclass(frozen=True)
class Launch:
    server: str  # "module:function" run in each rank: returns handle(job) -> result
    procs: int  # processes (torch: one per rank; JAX: one holding every device)
    label: str  # names the launch in messages: "torch tensor-parallel, P=2"
    env: tuple[tuple[str, str], ...] = ()
    start_timeout_s: float = START_TIMEOUT_S


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the rank (Linux): SIGKILL when the process that started it dies. Set here rather than in a
    preexec_fn, which would fork a multithreaded parent (JAX's) in Python; a parent already gone shows as
    another parent pid."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ[PARENT_ENV]):
        os._exit(1)


class Ranks:
    """A started launch: its processes, their pipes and logs."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.folder = Path(tempfile.mkdtemp(prefix="resconf-tp-"))
        self.tag = f"{os.environ.get(TAG_ENV, 'tp')}-{uuid.uuid4().hex[:8]}"
        self.jobs = 0
        port = _free_port()
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)  # what imports here imports there
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        try:
            for rank in range(launch.procs):
                env = {**os.environ, **dict(launch.env), "PYTHONPATH": path, "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(launch.procs), "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1",
                       PARENT_ENV: str(os.getpid())}
                log = self.folder / f"rank{rank}.log"
                self.logs.append(log)
                with open(log, "wb") as out:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", "resconf.backends.parallel.launch", launch.server, f"--tag={self.tag}"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out, env=env,
                        process_group=self.procs[0].pid if self.procs else 0))
            self._wait({r: "ready" for r in range(launch.procs)}, launch.start_timeout_s, "start")
        except BaseException:
            self.kill()
            raise

    # --- parent side ---
    def run(self, jobs: list, timeout_s: float) -> list:
        """Each rank's result for its job (jobs[r] to rank r)."""
        self.jobs += 1
        for rank, (proc, job) in enumerate(zip(self.procs, jobs, strict=True)):
            path = self.folder / f"job{self.jobs}.rank{rank}.pkl"
            path.write_bytes(pickle.dumps(job))
            try:
                proc.stdin.write(f"job {path}\n".encode())
                proc.stdin.flush()
            except BrokenPipeError:
                pass  # it died: _wait says how
        done = self._wait({r: "done" for r in range(len(self.procs))}, timeout_s, f"job {self.jobs}")
        results = []
        for rank in range(len(self.procs)):
            results.append(pickle.loads(Path(done[rank]).read_bytes()))
            for used in (Path(done[rank]), self.folder / f"job{self.jobs}.rank{rank}.pkl"):
                used.unlink()
        return results

    def _wait(self, want: dict[int, str], timeout_s: float, what: str) -> dict[int, str]:
        """Read every rank's messages until each has sent `want[rank]`; fail on an error, a death or the deadline."""
        got, progress, buffers = {}, {r: 0 for r in want}, {r: b"" for r in want}
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            for rank in want:
                sel.register(self.procs[rank].stdout, selectors.EVENT_READ, rank)
            while len(got) < len(want):
                left = deadline - time.monotonic()
                if left <= 0:
                    message = self._hung_message(want, got, progress, timeout_s, what)
                    self.kill()
                    raise RanksHung(message)
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    rank = key.data
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        self._died(rank, what)
                    *lines, buffers[rank] = (buffers[rank] + chunk).split(b"\n")
                    for line in lines:
                        kind, _, arg = line.decode().partition(" ")
                        if kind == "at":
                            progress[rank] = int(arg)
                        elif kind == "error":
                            raised = f"rank {rank} raised in {what}:\n{Path(arg).read_text()}".rstrip()
                            dead = self._dead_peer(rank)
                            if dead is not None:  # the cause; the error is its symptom (a closed connection)
                                self._died(dead, what, also=raised)
                            self.kill()
                            raise RankFailed(f"{self.launch.label}: {raised}")
                        elif kind == want[rank]:
                            got[rank] = arg
        return got

    def _dead_peer(self, rank: int, grace_s: float = 2.0) -> int | None:
        """A rank other than `rank` that has exited (waiting a moment: its peers see the broken connection
        before the exit status is in), else None."""
        end = time.monotonic() + grace_s
        while True:
            dead = [r for r, proc in enumerate(self.procs) if r != rank and proc.poll() is not None]
            if dead or time.monotonic() > end:
                return dead[0] if dead else None
            time.sleep(0.05)

    def _died(self, rank: int, what: str, also: str = "") -> None:
        proc = self.procs[rank]
        try:
            status = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            status = None
        how = ("closed its pipe" if status is None else f"was killed by {signal.Signals(-status).name}" if status < 0
               else f"exited with status {status}")
        message = (f"{self.launch.label}: rank {rank} {how} during {what}; the other ranks were killed. "
                   f"Its log ends:\n{self._tail(rank)}" + (f"\nWhat a peer saw: {also}" if also else ""))
        self.kill()
        raise RankFailed(message)

    def _hung_message(self, want, got, progress, timeout_s, what) -> str:
        silent = [r for r in want if r not in got]
        behind = min(progress[r] for r in silent)
        culprits = [r for r in silent if progress[r] == behind]
        return (f"{self.launch.label}: no answer from rank {', '.join(map(str, silent))} within {timeout_s:g} s "
                f"({what}); rank {', '.join(map(str, culprits))} stopped first, having entered {behind} "
                f"collective(s) of the job "
                f"(collectives entered per rank: {progress}); all {len(self.procs)} processes were killed. "
                f"Log of rank {culprits[0]}:\n{self._tail(culprits[0])}")

    def _tail(self, rank: int) -> str:
        text = self.logs[rank].read_text(errors="replace") if self.logs[rank].exists() else ""
        return "\n".join(text.strip().splitlines()[-15:]) or "(empty)"

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def close(self) -> None:
        """Ask the ranks to leave, then kill whatever is left."""
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        end = time.monotonic() + 2.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole group (a rank's own children too), then reap every rank."""
        if self.procs:
            try:
                os.killpg(self.procs[0].pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for pipe in (p.stdin, p.stdout):
                try:
                    pipe and pipe.close()
                except OSError:
                    pass
        if _POOLS.get(self.launch) is self:
            del _POOLS[self.launch]
        shutil.rmtree(self.folder, ignore_errors=True)


_POOLS: dict[Launch, Ranks] = {}


def run(launch: Launch, jobs: list, timeout_s: float = JOB_TIMEOUT_S) -> list:
    """Run jobs[r] on rank r of `launch` (started on first use, reused while healthy); results by rank."""
    pool = _POOLS.get(launch)
    if pool is None or not pool.alive():
        if pool is not None:
            pool.kill()
        pool = _POOLS[launch] = Ranks(launch)
    try:
        return pool.run(jobs, timeout_s)
    except BaseException:
        pool.kill()  # a failed, hung or interrupted job leaves the ranks out of step: never reuse them
        raise


@atexit.register
def close_all() -> None:
    for pool in list(_POOLS.values()):
        pool.close()


# --- rank side ---

_WIRE = None  # this rank's line to the parent


def _send(kind: str, arg: str = "") -> None:
    _WIRE.write(f"{kind} {arg}\n".encode())
    _WIRE.flush()


_ENTERED = 0


def progress() -> None:
    """Call before every collective: the parent learns how far each rank got in the job (a no-op outside a
    rank)."""
    global _ENTERED
    _ENTERED += 1
    if _WIRE is not None:
        _send("at", str(_ENTERED))


def rank_main(server: str) -> None:
    global _WIRE, _ENTERED
    _die_with_parent()
    _WIRE = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the rank prints goes to its log, not into the wire
    module, _, attr = server.partition(":")
    handle = getattr(importlib.import_module(module), attr)()
    _send("ready")
    for line in sys.stdin:
        path = Path(line.split(" ", 1)[1].strip())
        _ENTERED = 0
        try:
            result = handle(pickle.loads(path.read_bytes()))
            out = path.with_suffix(".out")
            out.write_bytes(pickle.dumps(result))
            _send("done", str(out))
        except Exception:  # noqa: BLE001  reported to the parent, which kills the launch
            err = path.with_suffix(".err")
            err.write_text(traceback.format_exc())
            _send("error", str(err))


if __name__ == "__main__":
    from resconf.backends.parallel import launch as tp_launch  # the module's own state (the wire), not __main__'s copy

    tp_launch.rank_main(sys.argv[1])

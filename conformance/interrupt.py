"""Ctrl-C (SIGINT) or SIGTERM during `resconf check`: every worker is killed at once, none is started after,
and the check goes on to write what finished (the cases left are recorded as not run) and exits 130 / 143.

Workers run in process groups of their own (conformance/worker.py), so a Ctrl-C at the terminal reaches only
`resconf check`, and killing a worker's group also ends whatever it started.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or 0)

    def add(self, proc: subprocess.Popen) -> None:
        """A worker just started; killed at once if the check was interrupted meanwhile."""
        with self._lock:
            self._running.add(proc)
        if self.signum:  # set before the handler snapshots the workers: one of the two kills it
            kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def handle(self, signum: int, frame=None) -> None:
        """The signal handler (main thread): no lock, which a worker's thread may hold."""
        self.signum = self.signum or signum
        for proc in list(self._running):
            kill_group(proc)

    @contextlib.contextmanager
    def catching(self) -> Iterator[Interrupt]:
        """SIGINT and SIGTERM handled by `handle` for the duration (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a worker's process group (its pid: it leads one of its own), if it still runs."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

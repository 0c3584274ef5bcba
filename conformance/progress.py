"""Live progress of a check: cases done of total per worker, the property running, elapsed time, ETA.

On a terminal one status line is redrawn in place (at most once a second); in a CI log, where control
characters would be noise, a plain line is printed every PLAIN_EVERY_S seconds instead.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

TTY_EVERY_S = 1.0
PLAIN_EVERY_S = 15.0
WIDTH = 80  # a status line longer than this is cut: a wrapped line cannot be redrawn in place


@dataclass
class WorkerProgress:
    label: str  # "torch" or "torch 2/2" (a part of a backend split with -n)
    done: int = 0
    total: int | None = None  # known once the worker has collected
    running: str = ""  # property ID of the case running now
    started: bool = True  # False for a worker expected but not started yet
    finished: bool = False


class Progress:
    """Shared by the threads that watch workers (they update their WorkerProgress) and the reporter thread."""

    def __init__(self, stream: TextIO | None = None, expect: list[str] = ()) -> None:
        """`expect`: the labels of every worker the run will start, so that the ETA knows of the ones
        not started yet."""
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.workers = {label: WorkerProgress(label, started=False) for label in expect}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, daemon=True)

    def worker(self, label: str) -> WorkerProgress:
        with self.lock:
            return self.workers.setdefault(label, WorkerProgress(label))

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def say(self, line: str) -> None:
        """A line of its own (a backend starting or ending) that the status line must not overwrite."""
        with self.lock:
            self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        with self.lock:
            active = [w for w in self.workers.values() if not w.finished]
            done = sum(w.done for w in self.workers.values())
            parts = [f"{w.label} {w.done}/{w.total if w.total is not None else '?'}"
                     + (f" {w.running}" if w.running else "") for w in active if w.started]
        eta = ""
        if done:  # a worker not started or not collected has work of unknown size: the ETA is then a floor
            left = sum(w.total - w.done for w in active if w.total is not None)
            floor = "> " if any(w.total is None for w in active) else ""
            eta = f", ETA {floor}{left * elapsed / done:.0f} s"
        return f"[{elapsed:.0f} s{eta}] " + " | ".join(parts)

    def _report(self) -> None:
        every = TTY_EVERY_S if self.tty else PLAIN_EVERY_S
        while not self._stop.wait(every):
            text = self.line()
            with self.lock:
                if self.tty:
                    self.stream.write("\r\x1b[K" + text[:WIDTH - 1])
                else:
                    self.stream.write("resconf: " + text + "\n")
                self.stream.flush()

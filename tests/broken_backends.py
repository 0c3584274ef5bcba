"""Backends that misbehave at the process level: they raise, hang, exit or crash the interpreter.

Unlike tests/mutants.py (wrong maths), these attack the harness: `resconf check` must record each as
failed for its own rows and still write every other backend's results (tests/test_isolation.py).
Each misbehaves only in rezero blocks in float64, so one run shows the broken case and healthy cases
of the same backend side by side, before and after it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

from resconf.backends.base import Capabilities
from resconf.backends.oracle.numpy_ref import NumpyReference


def broken(cfg, dtype: str) -> bool:
    """The one kind of case where a backend below misbehaves (Raises aside, which fails everywhere)."""
    return cfg.placement == "rezero" and dtype == "float64"


class MisbehavesInBrokenCases(NumpyReference):
    """The oracle, except that `misbehave` runs first in a broken case."""

    def misbehave(self) -> None:
        raise NotImplementedError

    def _stack_forward(self, cfg, params, x, dtype):
        if broken(cfg, dtype):
            self.misbehave()
        return super()._stack_forward(cfg, params, x, dtype)


class Raises(NumpyReference):
    """stack_forward raises: every case that calls it fails, as an ordinary test failure."""

    name = "raises"

    def _stack_forward(self, cfg, params, x, dtype):
        raise RuntimeError("stack_forward exploded")


class Hangs(NumpyReference):
    """Sleeps forever in a broken case: only the per-test timeout ends it."""

    name = "hangs"

    def _stack_forward(self, cfg, params, x, dtype):
        while broken(cfg, dtype):
            time.sleep(3600)
        return super()._stack_forward(cfg, params, x, dtype)


class HangsUninterruptibly(MisbehavesInBrokenCases):
    """Hangs in a broken case with SIGALRM blocked, as native code that masks signals would: the
    per-test timer cannot fire, so only the supervisor's kill ends it."""

    name = "hangs-uninterruptibly"

    def misbehave(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            time.sleep(3600)


class Exits(MisbehavesInBrokenCases):
    """Calls os._exit(1) in a broken case: the worker process vanishes mid-case."""

    name = "exits"

    def misbehave(self) -> None:
        os._exit(1)


class Segfaults(MisbehavesInBrokenCases):
    """Reads address 0 in a broken case: a real SIGSEGV."""

    name = "segfaults"

    def misbehave(self) -> None:
        ctypes.string_at(0)


class ClaimsNothing(NumpyReference):
    """Claims no placement and no fused kind: every case is skipped, so the run tested nothing."""

    name = "claims-nothing"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(placements=frozenset(), dtypes=frozenset({"float64"}), fused_kinds=frozenset())


def pytest_collection_modifyitems(items) -> None:
    """Loaded as a plugin (`-- -p tests.broken_backends`), this drops cases after collection, as a buggy
    plugin or parametrization would: every float16 case (the backend still claims float16, so the guard
    must notice that nothing ran in it), and, to keep the test short, every case but test_identity_block."""
    items[:] = [item for item in items if item.name.startswith("test_identity_block[")
                and item.callspec.params.get("dtype") != "float16"]


class Slow(MisbehavesInBrokenCases):
    """Correct, but slow in a broken case (30 s a call, as a big model on a busy machine): only a worker
    limit shorter than that ends it (tests/test_limits.py)."""

    name = "slow"

    def misbehave(self) -> None:
        time.sleep(30)


class LoadsForever(NumpyReference):
    """Its constructor never returns: the worker hangs while loading, before any case."""

    name = "loads-forever"

    def __init__(self, *args, **kwargs):
        time.sleep(3600)


CHATTY_BYTES = 5 * 2**20


class Chatty(NumpyReference):
    """Prints 5 MiB on every call, and fails in a broken case: its logs must stay capped."""

    name = "chatty"

    def _stack_forward(self, cfg, params, x, dtype):
        print("chatter " * (CHATTY_BYTES // 8))
        if broken(cfg, dtype):
            raise RuntimeError("chatty and wrong")
        return super()._stack_forward(cfg, params, x, dtype)


class RaisesChained(NumpyReference):
    """stack_forward raises `RuntimeError from KeyError`: the row must name the exception raised (the
    outer one), not its cause, which a traceback prints first."""

    name = "raises-chained"

    def _stack_forward(self, cfg, params, x, dtype):
        try:
            {}["weights"]
        except KeyError as exc:
            raise RuntimeError("stack_forward could not find its weights") from exc


class CapabilitiesRaise(NumpyReference):
    """Its capabilities raise: the backend cannot say what it claims, so it cannot be checked (a load failure)."""

    name = "capabilities-raise"

    @property
    def capabilities(self) -> Capabilities:
        raise ValueError("no capabilities today")


class VersionsRaise(NumpyReference):
    """Its versions() raises: every case still runs, and each row says what went wrong."""

    name = "versions-raise"

    def versions(self) -> dict[str, str]:
        raise ImportError("no module named 'mykernels'")


class LeavesAChild(NumpyReference):
    """Starts a process that outlives the worker and holds its output open (a compile server, a pool of
    helpers would): the check must still end, and end it."""

    name = "leaves-a-child"
    CHILD = ("sleep", "617.25")  # a duration no other process here uses, to find it by

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        subprocess.Popen(self.CHILD)

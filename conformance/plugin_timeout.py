"""pytest-timeout's `--timeout` with its signal method, raising an exception hypothesis lets through."""
from __future__ import annotations

import signal
import threading

import pytest

from resconf.conformance.plugin_active import active


class CaseTimeout(BaseException):
    """Raised by the per-test timer. Not an Exception (nor pytest's Failed), so hypothesis does not take
    it for a failing example and replay it to shrink it (pytest-timeout's own signal handler calls
    pytest.fail, which hypothesis catches; the replay then hangs again, with no timer left)."""


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    if (not active(item.config) or settings.method != "signal"
            or threading.current_thread() is not threading.main_thread()):
        return None  # pytest-timeout's thread method: dumps stacks and ends the worker (resconf check resumes it)

    def expire(signum, frame):
        raise CaseTimeout(f"timed out after {settings.timeout:g} s (the per-test --timeout)")

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # pytest-timeout's cancel hook calls this
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True

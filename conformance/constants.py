"""What `resconf check` (the supervisor) and its pytest workers agree on: exit statuses, JUnit names.

Both sides import this module, so the supervisor imports no part of the pytest plugin (conformance/plugin.py).
"""
from __future__ import annotations

WORKER_LOAD_FAILED = 6  # exit status of a worker whose backend cannot be loaded (conformance/backend_part.py reads it)
WORKER_NO_DEVICE = 7  # ... and of one whose backend does not run on the device asked for (a skip, not a failure)
JUNIT_PROPERTIES = ("property", "backend", "device", "dtype", "config", "mode")  # a JUnit testcase's <properties>


def junit_suite_name(backend: str) -> str:
    """JUnit suites are named by backend, so a CI test view groups cases by backend."""
    return f"resconf.{backend}"

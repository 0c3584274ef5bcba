"""RESCONF_PHASE_TIMES=<folder>: each worker writes where its time went (conformance/phase_times.py):
process start and imports, loading the backends, collection, the cases, and inside the cases the
oracle, the baseline, the framework's calls, JAX's compiles and writing the rows."""
from __future__ import annotations

import sys

import pytest

from resconf.conformance import phase_times
from resconf.conformance.plugin_active import active
from resconf.conformance.plugin_backends import LOADED

JAX_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                      "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                      "/jax/core/compile/backend_compile_duration": "XLA compile"}


def _on(config: pytest.Config) -> bool:
    return phase_times.ON and active(config)


def pytest_configure(config: pytest.Config) -> None:
    if _on(config) and (age := phase_times.process_age_s()) is not None:
        phase_times.add("start: interpreter, pytest, resconf imports", age)


@pytest.hookimpl(wrapper=True)
def pytest_sessionstart(session: pytest.Session):
    if not _on(session.config):
        return (yield)
    with phase_times.phase("load: the backends and their frameworks"):
        result = yield
    if "jax" in sys.modules:  # trace + lower + compile, inside the framework's calls
        import jax.monitoring

        def on_event(event: str, seconds: float, **_) -> None:
            if event in JAX_COMPILE_EVENTS:
                phase_times.add(f"jax {JAX_COMPILE_EVENTS[event]} (inside framework calls)", seconds)
        jax.monitoring.register_event_duration_secs_listener(on_event)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    if not _on(session.config):
        return (yield)
    with phase_times.phase("collect"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    if not _on(item.config):
        return (yield)
    with phase_times.phase("cases"):
        return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _on(session.config):
        phase_times.write({"backends": sorted(LOADED), "wall_s": phase_times.process_age_s()})

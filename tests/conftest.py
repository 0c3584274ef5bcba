"""The project's own tests: a plain `pytest` leaves out the heavy ones (`pytest -m heavy` runs them).

Done here rather than with `-m` in pyproject's addopts, which would also reach the conformance workers
that the tests start inside this checkout (their coverage guard reads any -m as a subset run)."""
from __future__ import annotations

import os

import pytest

# One BLAS thread per process: pytest-xdist runs a worker per CPU and many tests start conformance runs of their
# own, so a BLAS pool per process oversubscribes the cores, and OpenBLAS's spinning threads then lose far more
# than they gain (a band computation here took 10x longer under load with the default pool). Set before
# xdist starts its workers, which read it when they import NumPy; `resconf check`'s workers do the same.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("-m") or config.getoption("keyword"):
        return  # the user chose: `-m heavy`, `-k test_controls`
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("heavy")]

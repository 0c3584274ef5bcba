"""The baseline of every error budget (conformance/budgets.py): a few draws of the oracle's maths in the
working dtype (backends/controls.Baseline, each draw with other faithful perturbations), computed only
when a comparison needs them. A backend whose error is already within the floor never pays for them.

    base = baseline.stack_forward(cfg, params, x, dtype)            # nothing runs yet
    prop.within_budget("x_L", got, want, base.pick(lambda t: t.states[-1]), "forward", dtype)
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from resconf.backends.modes import DEFAULT_MODE
from resconf.backends.oracle.controls import Baseline
from resconf.conformance.phase_times import phase
from resconf.conformance.reference_cache import Store, cached_call

DRAWS = 3  # the error of one draw varies by up to ~3x between draws; the RMS of three is steadier


class Draws:
    """The results of one baseline call, one per draw, computed on first use and then kept."""

    def __init__(self, compute: Callable[[], list[Any]]) -> None:
        self._compute = functools.cache(compute)

    def pick(self, part: Callable[[Any], np.ndarray]) -> Callable[[], list[np.ndarray]]:
        """A thunk giving `part` of each draw's result (e.g. lambda trace: trace.states[-1])."""
        return lambda: [np.asarray(part(result)) for result in self._compute()]


class Baselines:
    """The Backend API's methods, each returning Draws instead of a result. With a `store`, a case's draws are
    computed once for every backend and run that draws it (conformance/reference_cache.py)."""

    def __init__(self, draws: int = DRAWS, store: Store | None = None, mode: str = DEFAULT_MODE,
                 target: str = "cpu") -> None:
        """`mode`, `target`: the execution mode and device whose rounding the draws emulate (backends/modes.py)."""
        self.backends = tuple(Baseline(seed=seed, mode=mode, target=target) for seed in range(draws))
        self.store = store
        rounding = self.backends[0].rounding if self.backends else {}
        self.role = f"baseline{draws}" + ("" if not any(rounding.values()) else f"-{mode}-{target}")

    def __getattr__(self, method: str) -> Callable[..., Draws]:
        def call(*args, **kwargs) -> Draws:
            def compute() -> list[Any]:
                with phase("baseline"):
                    return [getattr(b, method)(*args, **kwargs) for b in self.backends]
            # draw k runs with seed k; a mode that rounds otherwise keeps its draws apart
            return Draws(lambda: cached_call(self.store, self.role, method, compute, args, kwargs))
        return call


"""Hypothesis profiles: `ci` fast and derandomised, `nightly` thorough with a persisted example
database, `dev` in between, `smoke` the fastest. Heavy properties (dense Jacobians, deep stacks) run a fraction.

`ci`, `smoke` and `calibrate` fail fast: a failing case reports its first failing example and stops, without
shrinking it (a backend with one defect shrank each of its 62 failing cases, 15-25x the passing run's time;
docs/scaling.md); `--shrink` (resconf check) or `--resconf-shrink` turns shrinking on, as `dev` and `nightly`
always have it."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILES = ("ci", "nightly", "dev", "smoke", "calibrate")
STRUCTURE_DRAWN = ("dev", "nightly", "calibrate")  # shapes and depths drawn per example; else fixed per case
NIGHTLY_EXAMPLES = 300
EXAMPLES = {"ci": 6, "dev": 25, "smoke": 4, "calibrate": 100, "nightly": NIGHTLY_EXAMPLES}  # max_examples
DERANDOMISED = ("ci", "smoke")  # every run draws the same cases: compiles and references recur, caches pay
SHRINKING = ("dev", "nightly")  # the profiles that shrink a failing example; the others only with --shrink
FAIL_FAST = [Phase.explicit, Phase.generate]  # no shrink, no explain: both replay the failing case many times
DEFAULT = "ci"  # both entry points: `resconf check` and `pytest --pyargs resconf.conformance`
# The recorder fixture deliberately lives across examples (it keeps the worst case).
_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


def register(database_dir: Path) -> None:
    common = dict(deadline=None, suppress_health_check=_SUPPRESS, print_blob=True)
    settings.register_profile("ci", max_examples=EXAMPLES["ci"], derandomize=True, database=None,
                              phases=FAIL_FAST, **common)
    settings.register_profile("dev", max_examples=EXAMPLES["dev"], **common)
    # smoke: proves a mutant fails (tests/test_mutants.py)
    settings.register_profile("smoke", max_examples=EXAMPLES["smoke"], derandomize=True, database=None,
                              phases=FAIL_FAST, **common)
    # calibrate: fresh random seeds every run (a false failure's first example is the finding)
    settings.register_profile("calibrate", max_examples=EXAMPLES["calibrate"], database=None, phases=FAIL_FAST,
                              **common)
    # nightly: sized to finish within an hour for numpy + torch + jax on a 2-core machine (measured with
    # benchmarks/check_timing.sh: about 270 s fixed + 9.5 s per example; docs/scaling.md); --max-examples
    # 1000 for a deeper weekly run.
    settings.register_profile("nightly", max_examples=EXAMPLES["nightly"],
                              database=DirectoryBasedExampleDatabase(str(database_dir)), **common)


def shrinking(current: settings) -> settings:
    """`current` with shrinking on (--shrink): a failing example is made minimal before it is reported."""
    phases = [*current.phases, *(p for p in (Phase.shrink, Phase.explain) if p not in current.phases)]
    return settings(current, phases=phases)


def heavy(fraction: float = 0.2) -> settings:
    """Settings for an expensive property: a fraction of the profile's examples, at least 2, and no
    shrinking: its structure is fixed, so shrinking only replays costly examples with other seeds (a
    failing long-sequence case shrank for 170 s) and the first failing example is as informative."""
    current = settings.default
    phases = [p for p in current.phases if p is not Phase.shrink]
    return settings(current, max_examples=max(2, int(current.max_examples * fraction)), phases=phases)

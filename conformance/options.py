"""What `resconf check` was asked to do."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resconf.conformance.profiles import EXAMPLES


@dataclass(frozen=True)
class CheckOptions:
    backends: tuple[str, ...]
    device: str = "cpu"
    profile: str = "ci"
    modes: tuple[str, ...] = ("eager",)  # execution modes (backends/modes.py), or ("all",): --mode
    max_examples: int | None = None  # overrides the profile's
    shrink: bool = False  # shrink failing examples in a profile that does not (profiles.SHRINKING)
    cover: str | None = None  # which cases run (conformance/gate.py); None: the profile's default
    reference_cache: bool = True  # derandomised profiles keep the references under .resconf/cache/
    output: Path | None = None
    junitxml: Path | None = None
    xfails: tuple[Path, ...] = ()
    skip_xfails: bool = False
    worker_timeout_s: float | None = None  # --worker-timeout: each worker's limit; None: derived (worker_limit_s)
    test_timeout_s: float = 600.0
    pytest_args: tuple[str, ...] = ()
    workers: int = 1  # worker processes at once; above 1, each backend is also split in that many parts
    shard: str | None = None  # "K/N": this run is shard K of N (CI matrices; `resconf merge` joins them)
    durations_file: Path | None = None  # recorded case durations that balance shards and parts
    store_durations: bool = False  # record this run's case durations into durations_file
    require_device: bool = False  # fail the run when no backend ran on `device` (each skipped it)

    @property
    def hung_after_s(self) -> float:
        """When a case with no result is taken as hung beyond the timer's reach (the timer fires at
        test_timeout_s; the margin lets a slow teardown finish)."""
        return self.test_timeout_s + max(2.0, 0.5 * self.test_timeout_s)

    @property
    def load_limit_s(self) -> float:
        """How long a worker may take to start, load its backend and collect, before it reports its cases:
        as long as one case may take (hung_after_s), at least LOAD_FLOOR_S (a cold framework import on a
        busy machine)."""
        return self.worker_timeout_s or max(LOAD_FLOOR_S, self.hung_after_s)

    @property
    def case_allowance_s(self) -> float:
        """A worker's time per case it has to run: generous for the profile's examples (a nightly case takes
        a few seconds on average; docs/scaling.md), never more than a case may take before it is killed
        as hung."""
        examples = self.max_examples or EXAMPLES[self.profile]
        return min(self.hung_after_s, CASE_BASE_S + EXAMPLE_S * examples)

    def worker_limit_s(self, cases: int | None) -> float:
        """When a worker is killed, counted from its start: the load limit until it has collected, then
        that plus an allowance for each of the `cases` it has to run; --worker-timeout replaces both."""
        if self.worker_timeout_s or cases is None:
            return self.load_limit_s
        return self.load_limit_s + cases * self.case_allowance_s


LOAD_FLOOR_S = 60.0
CASE_BASE_S = 30.0  # per case, whatever the examples: fixtures, a JAX compile, a torch.compile
EXAMPLE_S = 2.0  # per example

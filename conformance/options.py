"""What `resconf check` was asked to do."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckOptions:
    backends: tuple[str, ...]
    device: str = "cpu"
    profile: str = "ci"
    max_examples: int | None = None  # overrides the profile's
    output: Path | None = None
    junitxml: Path | None = None
    xfails: tuple[Path, ...] = ()
    skip_xfails: bool = False
    worker_timeout_s: float = 1800.0
    test_timeout_s: float = 600.0
    pytest_args: tuple[str, ...] = ()
    workers: int = 1  # worker processes at once; above 1, each backend is also split in that many parts
    shard: str | None = None  # "K/N": this run is shard K of N (CI matrices; `resconf merge` joins them)
    durations_file: Path | None = None  # recorded case durations that balance shards and parts
    store_durations: bool = False  # record this run's case durations into durations_file

    @property
    def hung_after_s(self) -> float:
        """When a case with no result is taken as hung beyond the timer's reach (the timer fires at
        test_timeout_s; the margin lets a slow teardown finish)."""
        return self.test_timeout_s + max(2.0, 0.5 * self.test_timeout_s)

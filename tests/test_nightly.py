"""The nightly comparison (reports/nightly.py) on synthetic samples: nothing here is timed.

The samples are seeded log-normal draws with the spread an interleaved A/A run measured on the 2-core VM
(docs/benchmarks.md, "Regression detection"); a slowed mutant's are the same draws times 1.5.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from resconf.reports import nightly as nt
from resconf.reports.load import BenchRow

ASV_FIXTURE = Path(__file__).parent / "fixtures" / "asv_results" / "benchmarks.json"
SPREAD = 0.08  # log-normal sigma of one sample: above what the A/A run measured, so the test is not lenient
COMMITS = [f"{i:040x}" for i in range(1, 13)]


def samples(median: float, seed: int, count: int = 10) -> tuple[float, ...]:
    return tuple(median * np.random.default_rng(seed).lognormal(0.0, SPREAD, count))


def row(commit: int, times: tuple[float, ...] | None, backend: str = "numpy") -> BenchRow:
    """One point of add_rmsnorm_forward; times None: it failed there."""
    return BenchRow(machine="vm", commit=COMMITS[commit], date=f"2026-12-{commit + 1:02d}", op="add_rmsnorm_forward",
                    backend=backend, device="cpu", dtype="float32", case="8192x4096",
                    time_s=math.nan if times is None else float(np.median(times)), gbps=None, roofline_gbps=None,
                    roofline_fraction=None, samples=None if times is None else len(times), sample_times=times or (),
                    benchmark="bench_fused.AddRMSNormForward.time_add_rmsnorm_forward",
                    params=f"backend={backend};device=cpu;dtype=float32;shape=8192x4096")


def verdict_of(*points: tuple[float, ...] | None) -> nt.Verdict:
    rows = [row(i, times) for i, times in enumerate(points)]
    found = nt.nightly([r for r in rows if not math.isnan(r.time_s)], [r for r in rows if math.isnan(r.time_s)])
    assert len(found) == 1
    return found[0]


def test_a_mutant_one_and_a_half_times_slower_is_slower():
    v = verdict_of(samples(0.1, 1), tuple(1.5 * t for t in samples(0.1, 2)))
    assert v.verdict == nt.SLOWER, v.why
    assert v.ratio == pytest.approx(1.5, rel=0.1) and v.p_value < nt.ALPHA


def test_a_twice_as_fast_kernel_is_faster():
    assert verdict_of(samples(0.1, 1), samples(0.05, 2)).verdict == nt.FASTER


def test_the_same_kernel_twice_is_the_same_over_many_seeds():
    """A/A on synthetic samples: no false alarm in 200 pairs at the documented thresholds."""
    verdicts = [verdict_of(samples(0.1, 2 * i), samples(0.1, 2 * i + 1)).verdict for i in range(200)]
    assert verdicts.count(nt.SAME) == 200, {v: verdicts.count(v) for v in set(verdicts)}


def test_a_failed_benchmark_is_errored_never_slower():
    assert verdict_of(samples(0.1, 1), None).verdict == nt.ERRORED
    assert verdict_of(None, samples(0.1, 1)).verdict == nt.ERRORED
    # even with a slower history behind it, a failure at the newest point reads as errored
    v = verdict_of(samples(0.1, 1), samples(0.3, 2), None)
    assert v.verdict == nt.ERRORED and v.ratio is None and "newest point" in v.why


def test_one_sample_a_side_is_ambiguous_not_slower():
    v = verdict_of(samples(0.1, 1, count=1), samples(0.3, 2, count=1))
    assert v.verdict == nt.AMBIGUOUS and "samples" in v.why


def test_a_machine_history_that_swings_as_much_makes_a_change_ambiguous():
    """The U test says 1.5x slower, but the last nights' medians swung from 0.1 to 0.15: not a regression yet."""
    swinging = [samples(0.1 if i % 2 else 0.15, i) for i in range(8)]
    v = verdict_of(*swinging, samples(0.1, 20), tuple(1.5 * t for t in samples(0.1, 21)))
    assert v.verdict == nt.AMBIGUOUS and v.z_score is not None and abs(v.z_score) < nt.Z_LIMIT, v.why
    assert v.why.startswith("the U test's p = "), v.why  # names the test that agreed (no rounds recorded here)
    steady = [samples(0.1, i) for i in range(8)]
    v = verdict_of(*steady, samples(0.1, 20), tuple(1.5 * t for t in samples(0.1, 21)))
    assert v.verdict == nt.SLOWER and v.z_score > nt.Z_LIMIT, v.why


def test_the_rerun_command_selects_exactly_one_asv_parameter_combination():
    """asv's --bench matches `name(param, ...)` with the values as benchmarks.json spells them."""
    listed = json.loads(ASV_FIXTURE.read_text())
    for name, info in listed.items():
        if not isinstance(info, dict) or not info["params"]:
            continue
        for combo in itertools.product(*info["params"]):
            values = [_export_value(v) for v in combo]
            key = ";".join(f"{k}={v}" for k, v in zip(info["param_names"], values))
            selector = nt.asv_selector(name, key)
            matched = [c for c in itertools.product(*info["params"]) if re.search(selector, f"{name}({', '.join(c)})")]
            assert matched == [combo], (selector, matched)
    v = verdict_of(samples(0.1, 1), samples(0.1, 2))
    assert v.rerun().startswith("asv continuous ") and v.rerun().endswith(f"{COMMITS[0][:12]} {COMMITS[1][:12]}")


def _export_value(asv_value: str) -> str:
    """What the export writes for asv's repr(): 'torch' -> torch, (8192, 4096) -> 8192x4096, 4 -> 4."""
    value = eval(asv_value)  # noqa: S307  benchmarks.json's own repr() strings
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_without_scipy_a_change_is_ambiguous_not_a_crash(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails as if scipy were not installed
    v = verdict_of(samples(0.1, 1), tuple(1.5 * t for t in samples(0.1, 2)))
    assert v.verdict == nt.AMBIGUOUS and "scipy" in v.why


# --- rounds as the unit: processes of the same code whose medians differ (docs/benchmarks.md, "The A/A runs") ---
BETWEEN = 0.2  # log-normal sigma of a round's (process's) level: this VM showed 8-11 ms beside 13-15 ms


def rounds_row(commit: int, median: float, seed: int, rounds: int = 4, per_round: int = 25,
               recorded: bool = True, between: float = BETWEEN) -> BenchRow:
    """A point of `rounds` processes, each at its own level around `median`, `per_round` samples each."""
    rng = np.random.default_rng(seed)
    times = tuple(t for _ in range(rounds) for t in median * math.exp(rng.normal(0.0, between))
                  * rng.lognormal(0.0, SPREAD, per_round))
    base = row(commit, times)
    return dataclasses.replace(base, sample_rounds=(per_round,) * rounds if recorded else ())


def alarms(recorded: bool, factor: float = 1.0, pairs: int = 200, between: float = BETWEEN) -> dict[str, int]:
    found = [nt.nightly([rounds_row(0, 0.01, 2 * i, recorded=recorded, between=between),
                         rounds_row(1, 0.01 * factor, 2 * i + 1, recorded=recorded, between=between)])[0].verdict
             for i in range(pairs)]
    return {v: found.count(v) for v in (nt.SAME, nt.AMBIGUOUS, nt.SLOWER, nt.FASTER)}


def test_with_rounds_recorded_a_difference_between_processes_is_no_alarm():
    """A/A with a process-level spread: the U test on pooled samples cries wolf, the rounds' t test does not."""
    pooled, by_round = alarms(recorded=False), alarms(recorded=True)
    assert pooled[nt.SLOWER] + pooled[nt.FASTER] > 20, pooled  # the samples are not independent
    assert by_round[nt.SLOWER] + by_round[nt.FASTER] <= 2, by_round  # the documented rate: under 1 %


def test_with_rounds_recorded_a_steady_one_and_a_half_times_slower_kernel_is_slower():
    """Power, 4 rounds a side: with rounds as steady as numpy's (sigma 0.05 between them) a 1.5x change reads
    slower; docs/benchmarks.md tabulates the power against the spread between rounds."""
    found = alarms(recorded=True, factor=1.5, pairs=50, between=0.05)
    assert found[nt.SLOWER] == 50, found


def test_a_round_record_that_does_not_add_up_falls_back_to_the_samples():
    r = rounds_row(0, 0.01, 1)
    assert nt.round_medians(r) is not None and len(nt.round_medians(r)) == 4
    assert nt.round_medians(dataclasses.replace(r, sample_rounds=(25, 25, 25))) is None  # 75 of 100
    assert nt.round_medians(dataclasses.replace(r, sample_rounds=(50, 50))) is None  # fewer than MIN_ROUNDS

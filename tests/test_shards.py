"""Splitting a check: shards that partition the selection and merge back to the unsharded run, -n that
changes nothing but the wall time, progress in a captured log, and a failing backend's logs kept."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resconf.conformance import merge, progress, shards
from resconf.conformance.results import ResultRow

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "test_identity or test_fused"  # about 40 numpy cases, a few seconds


def resconf(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resconf.conformance.cli", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True,
                          text=True, timeout=600)


def outcomes(path: Path) -> list[tuple[str, str, str]]:
    return sorted((r["backend"], r["test"], r["outcome"]) for r in pq.read_table(path).to_pylist())


def test_partition_is_disjoint_complete_and_balanced():
    ids = [f"t{i}" for i in range(50)]
    durations = {f"t{i}": float(i % 7) + 0.1 for i in range(40)}  # ten ids unknown to the file
    assigned = shards.partition(ids, durations, 3)
    assert sorted(assigned) == sorted(ids) and set(assigned.values()) == {1, 2, 3}
    load = [sum(durations.get(i, shards.UNKNOWN_S) for i in ids if assigned[i] == k) for k in (1, 2, 3)]
    assert max(load) - min(load) <= max(durations.values())
    assert shards.partition(reversed(ids), durations, 3) == assigned  # the order given does not matter


def test_a_group_goes_to_one_shard_as_a_unit():
    """Cases sharing a per-process setup (the tensor-parallel ranks) land in one shard, their durations summed."""
    ids = [f"t{i}" for i in range(12)] + [f"tp{i}" for i in range(4)]
    durations = dict.fromkeys(ids, 1.0)
    assigned = shards.partition(ids, durations, 2, lambda i: "ranks" if i.startswith("tp") else None)
    assert len({assigned[f"tp{i}"] for i in range(4)}) == 1
    load = [sum(durations[i] for i in ids if assigned[i] == k) for k in (1, 2)]
    assert load == [8.0, 8.0]  # the group (4 s) first, then the rest fill the other shard up to it
    ungrouped = shards.partition(ids, durations, 2)
    assert len({ungrouped[f"tp{i}"] for i in range(4)}) == 2  # without the group they would split


def test_a_bad_shard_is_one_line_naming_the_form(tmp_path):
    proc = resconf(tmp_path, "check", "--backend", "numpy", "--shard", "4/3")
    assert proc.returncode == 2 and "expected K/N with 1 <= K <= N" in proc.stderr


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The subset three ways: unsharded one process at a time, unsharded with -n 2, and in 3 shards."""
    tmp = tmp_path_factory.mktemp("split")
    for args in (["-n", "0", "--output", "whole.parquet"], ["-n", "2", "--output", "parallel.parquet"],
                 *(["--shard", f"{k}/3", "--output", f"shard{k}.parquet"] for k in (1, 2, 3))):
        proc = resconf(tmp, "check", "--backend", "numpy", "-k", SUBSET, *args)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return tmp


def test_three_shards_merge_to_exactly_the_unsharded_run(split):
    parts = [outcomes(split / f"shard{k}.parquet") for k in (1, 2, 3)]
    assert all(parts) and not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])
    proc = resconf(split, "merge", *(f"shard{k}.parquet" for k in (1, 2, 3)), "-o", "merged.parquet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outcomes(split / "merged.parquet") == outcomes(split / "whole.parquet")
    rows = pq.read_table(split / "merged.parquet").to_pylist()
    assert {r["shard"] for r in rows} == {"1/3", "2/3", "3/3"} and len({r["run_id"] for r in rows}) == 1


def test_a_missing_shard_fails_the_merge_and_writes_nothing(split):
    proc = resconf(split, "merge", "shard1.parquet", "shard3.parquet", "-o", "partial.parquet")
    assert proc.returncode == merge.EXIT_INCOMPLETE
    assert "backend numpy: shard 2/3 missing" in proc.stderr
    assert not (split / "partial.parquet").exists()


def test_parallel_workers_give_the_same_outcomes(split):
    assert outcomes(split / "parallel.parquet") == outcomes(split / "whole.parquet")


def row(prop: str, dtype: str, shard: str) -> ResultRow:
    return ResultRow(run_id="r", backend="b", device="cpu", dtype=dtype, property=prop, test=f"{prop}-{dtype}",
                     config="c", outcome="passed", measured=None, bound=None, comparison="", worst_config="",
                     counterexample="", message="", rerun="", seed="", examples=1, duration_s=0.0, shard=shard)


def test_merge_fails_coverage_that_no_shard_has():
    rows = [row("ID-1", "float32", "1/2"), row("GR-1", "float32", "2/2")]
    expected = [["GR-1", "float32"], ["ID-1", "float32"], ["XB-1", "float32"]]
    merge.check_complete(rows)
    merged, _ = merge.merge(rows, {"b": {"expected": expected, "filtered": False}})
    guards = [(r.property, r.config, r.outcome) for r in merged if r.property == "GUARD"]
    assert guards == [("GUARD", "covers=XB-1", "failed")]
    merged, notes = merge.merge(rows, {"b": {"expected": expected, "filtered": True}})
    assert not [r for r in merged if r.property == "GUARD"] and "1 (property, dtype) pairs" in notes[0]


def test_progress_lines_in_a_captured_log_are_plain():
    log = io.StringIO()  # not a TTY
    with progress.Progress(log) as live:
        worker = live.worker("torch 1/2")
        worker.total, worker.done, worker.running = 40, 10, "XB-2"
        live.say("resconf: checking backend torch 1/2 ...")
    text = log.getvalue() + live.line()
    assert "\x1b" not in text and "\r" not in text
    assert "torch 1/2 10/40 XB-2" in live.line() and "ETA" in live.line()


def test_a_failing_backends_worker_log_is_kept_next_to_the_results(tmp_path):
    proc = resconf(tmp_path, "check", "--backend", "tests.mutants:SkipDropped", "-k", "test_identity_block",
                   "--output", "r.parquet")
    assert proc.returncode == 1
    logs = list((tmp_path / "_r.logs").iterdir())
    assert logs and any("test_identity_block" in p.read_text() for p in logs)
    assert "worker logs kept in" in proc.stdout

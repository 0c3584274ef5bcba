"""Reading the report's inputs: conformance results files and the benchmark export.

A file that cannot be read (missing, empty, corrupt, another schema version) becomes an `Unreadable` with a
one-line reason instead of an exception: the report is built from whatever could be read and lists the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from resconf.conformance.results import ResultRow, read_results, row_from_record

# Errors that mean "this file is not a table we can use", as opposed to a bug in the report itself.
READ_ERRORS = (OSError, pa.ArrowException, ValueError, TypeError, KeyError)
BENCH_REQUIRED = ("op", "backend", "time_s")
SCHEMA_KEY = b"resconf_schema_version"  # what conformance/results.py writes into every results file


@dataclass(frozen=True)
class Unreadable:
    path: str
    reason: str  # one line


@dataclass(frozen=True)
class BenchRow:
    """One timed case of the benchmark export; a column the export lacks reads as "" or None."""

    machine: str
    commit: str
    date: str  # ISO 8601; "" when the export has no date
    op: str
    backend: str
    device: str
    dtype: str
    case: str  # the shape ("2048x4096") and any further parameter, what rows of one op are compared at
    time_s: float
    gbps: float | None
    roofline_gbps: float | None
    roofline_fraction: float | None
    samples: int | None = None  # how many samples time_s is the median of (1: asv --quick); None: not exported
    quartiles: tuple[float, float] | None = None  # the samples' 25th and 75th percentiles, when exported
    flag: str | None = None  # why a figure above the roofline is there (reports/roofline_flags.py)
    sample_times: tuple[float, ...] = ()  # every sample, when asv recorded them (--record-samples)
    sample_rounds: tuple[int, ...] = ()  # how many of sample_times each round (process) gave (reports/sample_rounds.py)
    benchmark: str = ""  # asv's name, for a rerun command
    params: str = ""  # the export's stable parameter key: "backend=torch;device=cpu;dtype=float32;shape=8192x4096"
    bytes_moved: int | None = None
    cache_bytes: int | None = None  # the device's last-level cache, where the suite recorded it
    gflops: float | None = None  # a preset stack's or a matmul's (reports/flops.py)
    matmul_fraction: float | None = None  # gflops over the best matmul's on the same machine, device and dtype

    @property
    def single_sample(self) -> bool:
        """One timed call (asv --quick): a smoke test, not a measurement to compare."""
        return self.samples == 1


@dataclass(frozen=True)
class Inputs:
    results: tuple[ResultRow, ...]
    bench: tuple[BenchRow, ...]
    sources: tuple[str, ...]  # the files read
    unreadable: tuple[Unreadable, ...]
    bench_failed: tuple[BenchRow, ...] = ()  # combinations that failed (no time: time_s is NaN)


def one_line(exc: BaseException, path: Path) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.removeprefix(f"{path}: ")[:300]


def expand(paths: list[Path]) -> tuple[list[Path], list[Unreadable]]:
    """Files as given; a directory (a partitioned dataset) stands for every .parquet file under it."""
    files, bad = [], []
    for path in paths:
        if not path.exists():
            bad.append(Unreadable(str(path), "no such file or directory"))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            files.extend(found)
            if not found:
                bad.append(Unreadable(str(path), "directory holds no .parquet files"))
        else:
            files.append(path)
    return files, bad


result_row = row_from_record  # the report's name for it


def load_results(paths: list[Path]) -> tuple[list[ResultRow], list[str], list[Unreadable]]:
    files, bad = expand(paths)
    rows: list[ResultRow] = []
    read: list[str] = []
    for path in files:
        try:
            if SCHEMA_KEY not in (pq.read_schema(path).metadata or {}):
                raise ValueError("not a conformance results file (its metadata has no resconf_schema_version)")
            table = read_results(path)
            found = [result_row(record) for record in table.to_pylist()]
        except READ_ERRORS as exc:
            bad.append(Unreadable(str(path), one_line(exc, path)))
            continue
        if not found:
            bad.append(Unreadable(str(path), "holds no result rows"))
            continue
        rows.extend(found)
        read.append(str(path))
    return rows, read, bad


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return "" if value is None else str(value)


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _case(record: dict) -> str:
    tokens, hidden = record.get("tokens"), record.get("hidden")
    shape = f"{tokens}x{hidden}" if tokens is not None and hidden is not None else _text(record.get("shape"))
    extra = [record["preset"]] if record.get("preset") else []  # a preset stack's layer: gpt2, llama
    extra += [f"depth {record['depth']}"] if record.get("depth") is not None else []
    return ", ".join([shape or "-"] + extra)


def machine_labels(records: list[dict]) -> list[str]:
    """Each record's machine, with asv's environment name where that machine ran in several (different
    Pythons or dependency sets are not comparable, so each is reported as a machine of its own)."""
    envs: dict[str, set[str]] = {}
    for r in records:
        envs.setdefault(_text(r.get("machine")), set()).add(_text(r.get("env_name")))
    return [f"{m} [{_text(r.get('env_name'))}]" if len(envs[m]) > 1 else m
            for r, m in ((r, _text(r.get("machine"))) for r in records)]


def bench_row(record: dict, machine: str) -> BenchRow:
    gbps = _number(record.get("gbps"))
    if gbps is None and _number(record.get("bytes_moved")) and _number(record["time_s"]):
        gbps = record["bytes_moved"] / record["time_s"] / 1e9
    return BenchRow(
        machine=machine, commit=_text(record.get("commit")), date=_text(record.get("date")),
        op=_text(record["op"]), backend=_text(record["backend"]) or "-", device=_text(record.get("device")) or "-",
        dtype=_text(record.get("dtype")) or "-", case=_case(record), time_s=_number(record["time_s"]) or math.nan,
        gbps=gbps,
        roofline_gbps=_number(record.get("roofline_gbps")),
        roofline_fraction=_number(record.get("roofline_fraction")),
        samples=None if record.get("samples") is None else int(record["samples"]), quartiles=_quartiles(record),
        flag=record.get("flag") or None, sample_times=tuple(record.get("time_samples_s") or ()),
        sample_rounds=tuple(record.get("time_sample_rounds") or ()),
        benchmark=_text(record.get("benchmark")), params=_text(record.get("params")),
        bytes_moved=None if record.get("bytes_moved") is None else int(record["bytes_moved"]),
        cache_bytes=None if record.get("cache_bytes") is None else int(record["cache_bytes"]),
        gflops=_number(record.get("gflops")), matmul_fraction=_number(record.get("matmul_fraction")),
    )


def _quartiles(record: dict) -> tuple[float, float] | None:
    low, high = _number(record.get("time_q25_s")), _number(record.get("time_q75_s"))
    return None if low is None or high is None else (low, high)


def load_bench(path: Path) -> tuple[list[BenchRow], list[Unreadable], list[BenchRow]]:
    """(rows with a time, unreadable, rows of failed combinations: no time, time_s NaN)."""
    if not path.is_file():
        return [], [Unreadable(str(path), "no such file")], []
    try:
        table = pq.read_table(path)
        missing = [c for c in BENCH_REQUIRED if c not in table.column_names]
        if missing:
            raise ValueError(f"not a benchmark export: no column {', '.join(missing)}")
        records = table.to_pylist()
        every = [bench_row(r, machine) for r, machine in zip(records, machine_labels(records))]
    except READ_ERRORS as exc:
        return [], [Unreadable(str(path), one_line(exc, path))], []
    rows = [r for r in every if not math.isnan(r.time_s)]
    failed = [r for r in every if math.isnan(r.time_s)]
    return rows, [] if rows else [Unreadable(str(path), "holds no timed benchmark rows")], failed


def load_inputs(results: list[Path], bench: Path | None) -> Inputs:
    rows, read, bad = load_results(results)
    bench_rows, bench_bad, failed = load_bench(bench) if bench is not None else ([], [], [])
    if bench_rows:
        read.append(str(bench))
    return Inputs(results=tuple(rows), bench=tuple(bench_rows), sources=tuple(read), unreadable=tuple(bad + bench_bad),
                  bench_failed=tuple(failed))

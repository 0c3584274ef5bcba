"""`resconf bench-export`: an asv results directory -> one Parquet table (schema: docs/benchmarks.md).

One row per (machine, commit, environment, benchmark, parameter combination) that has a time or failed.
Skipped combinations (NotImplementedError in setup: asv stores NaN) are left out; failed ones (None) keep a
row with no time, so that a comparison can call them errored rather than missing. GB/s is bytes_moved /
time_s with the formulas of reports/bytes_moved.py; roofline_fraction divides it by the best streaming
kernel's GB/s (copy, add, one thread or all cores) measured in the same results file (same machine, commit
and environment) on the same device and shape, and a figure above it is flagged (reports/roofline_flags.py).
The asv files are read with asv's own loader, so its format stays its own.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from resconf.backends.dtypes import element_bytes
from resconf.conformance.results import write_parquet_atomic
from resconf.reports import sample_rounds
from resconf.reports.bytes_moved import BYTES_MOVED, ROOFLINE_OPS
from resconf.reports.flops import MATMUL_OP, PRESET_OPS, work
from resconf.reports.roofline_flags import over_roofline_flag
from resconf.conformance.home import HOME

DEFAULT_RESULTS_DIR = Path(".asv/results")
DEFAULT_OUTPUT = HOME / "benchmarks.parquet"
SCHEMA_VERSION = 4  # in the file metadata; any change to the columns bumps it (docs/benchmarks.md); 2: quartiles;
# 3: flag, time_samples_s, cache_bytes, preset, flops, gflops, matmul_peak_gflops, matmul_fraction, and failed
# combinations as rows without a time; 4: time_sample_rounds
# asv's record of the device's last-level cache (bench_roofline.py): what a cache-resident flag is judged by
CACHE_BENCHMARK = "bench_roofline.LastLevelCache.track_last_level_cache_bytes"

SCHEMA = pa.schema([
    ("machine", pa.string()),
    ("commit", pa.string()),
    ("date", pa.timestamp("ms", tz="UTC")),
    ("env_name", pa.string()),
    ("benchmark", pa.string()),
    ("op", pa.string()),
    ("params", pa.string()),
    ("backend", pa.string()),
    ("device", pa.string()),
    ("dtype", pa.string()),
    ("tokens", pa.int64()),
    ("hidden", pa.int64()),
    ("depth", pa.int64()),
    ("time_s", pa.float64()),
    ("samples", pa.int64()),
    ("time_q25_s", pa.float64()),
    ("time_q75_s", pa.float64()),
    ("bytes_moved", pa.int64()),
    ("gbps", pa.float64()),
    ("roofline_gbps", pa.float64()),
    ("roofline_fraction", pa.float64()),
    ("flag", pa.string()),
    ("time_samples_s", pa.list_(pa.float64())),
    ("cache_bytes", pa.int64()),
    ("preset", pa.string()),
    ("flops", pa.int64()),
    ("gflops", pa.float64()),
    ("matmul_peak_gflops", pa.float64()),
    ("matmul_fraction", pa.float64()),
    ("time_sample_rounds", pa.list_(pa.int64())),
], metadata={"resconf_bench_schema_version": str(SCHEMA_VERSION)})


@dataclass(frozen=True)
class BenchRow:
    """One timed parameter combination; the fields are SCHEMA's columns, in order."""

    machine: str
    commit: str
    date: datetime  # the commit's date, as asv records it
    env_name: str
    benchmark: str  # asv's name, e.g. bench_fused.AddRMSNormForward.time_add_rmsnorm_forward
    op: str  # the method's name without "time_": the key of reports.bytes_moved.BYTES_MOVED
    params: str  # "backend=torch;device=cpu;dtype=float32;shape=512x1024": a stable key
    backend: str | None
    device: str | None
    dtype: str | None
    tokens: int | None
    hidden: int | None
    depth: int | None
    time_s: float | None  # asv's result: the median over samples of seconds per call; None: it failed
    samples: int | None  # how many samples that median is over (1 in a --quick run)
    time_q25_s: float | None  # the samples' quartiles, asv's q_25 and q_75: the spread around the median
    time_q75_s: float | None
    bytes_moved: int | None
    gbps: float | None
    roofline_gbps: float | None
    roofline_fraction: float | None
    flag: str | None = None  # why a figure above the roofline is there (reports/roofline_flags.py); else None
    time_samples_s: tuple[float, ...] | None = None  # every sample (asv run --record-samples), for the U test
    cache_bytes: int | None = None  # the device's last-level cache, as the suite recorded it
    preset: str | None = None  # the layer of a preset stack (bench_presets.py)
    flops: int | None = None  # reports/flops.py's model; null for ops without one
    gflops: float | None = None  # flops / time_s / 1e9
    matmul_peak_gflops: float | None = None  # the best matmul GFLOP/s in the same results file, device and dtype
    matmul_fraction: float | None = None  # gflops / matmul_peak_gflops
    # how many of time_samples_s each round (process) gave, in order, where reports/sample_rounds.py recorded it
    time_sample_rounds: tuple[int, ...] | None = None


def to_table(rows: Iterable[BenchRow]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=SCHEMA)


def read_rows(results_dir: Path) -> list[BenchRow]:
    """Every timed combination of every results file under results_dir (all machines)."""
    try:
        from asv.results import iter_results
    except ImportError as exc:
        raise SystemExit(f"reading asv results needs asv: pip install 'resconf[bench]' ({exc})") from None
    param_names = _param_names(results_dir / "benchmarks.json")
    rows: list[BenchRow] = []
    for results in iter_results(str(results_dir)):
        rounds = sample_rounds.load(results_dir, results.params["machine"], sample_rounds.file_name(results))
        rows += _with_roofline(list(_rows_of(results, param_names, rounds)), _cache_bytes(results))
    return sorted(rows, key=lambda r: (r.machine, r.date, r.commit, r.env_name, r.benchmark, r.params))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resconf bench-export",
                                     description="Convert asv benchmark results to one Parquet table.")
    parser.add_argument("results_dir", nargs="?", type=Path, default=DEFAULT_RESULTS_DIR,
                        help=f"asv's results_dir (default: {DEFAULT_RESULTS_DIR})")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"Parquet file to write (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if not (args.results_dir / "benchmarks.json").is_file():
        print(f"error: {args.results_dir} is not an asv results directory (no benchmarks.json); "
              f"run `asv run ... --set-commit-hash $(git rev-parse HEAD)` first (docs/benchmarks.md)",
              file=sys.stderr)
        return 2
    rows = read_rows(args.results_dir)
    if not any(r.time_s is not None for r in rows):
        print(f"error: no timed benchmark results under {args.results_dir}", file=sys.stderr)
        return 1
    write_parquet_atomic(to_table(rows), args.output)
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


def _param_names(benchmarks_json: Path) -> dict[str, list[str]]:
    """Benchmark name -> its param_names, from the benchmarks.json asv writes next to the results."""
    listed = json.loads(benchmarks_json.read_text())
    return {name: info["param_names"] for name, info in listed.items() if isinstance(info, dict)}


def _rows_of(results, param_names: dict[str, list[str]], rounds: sample_rounds.Record | None = None
             ) -> Iterable[BenchRow]:
    """The timed combinations of one results file, without the roofline columns; `rounds`: its round record."""
    date = datetime.fromtimestamp(results.date / 1000, tz=timezone.utc)
    for benchmark in sorted(results.get_all_result_keys()):
        method = benchmark.rsplit(".", 1)[-1]
        if not method.startswith("time_"):
            continue  # only time_ results are seconds
        params = results.get_result_params(benchmark)
        names = param_names.get(benchmark) or [f"param{i + 1}" for i in range(len(params))]
        values = results.get_result_value(benchmark, params)
        stats = results.get_result_stats(benchmark, params) or [None] * len(values)
        samples = results.get_result_samples(benchmark, params) or [None] * len(values)
        counts = (rounds or {}).get(benchmark, [])
        for i, (combo, time_s, stat, drawn) in enumerate(zip(itertools.product(*params), values, stats, samples)):
            if time_s is not None and math.isnan(time_s):
                continue  # skipped: NotImplementedError in setup
            row = _row(results, date, benchmark, method.removeprefix("time_"),
                       dict(zip(names, map(_literal, combo))), time_s, stat, drawn)
            split = counts[i] if i < len(counts) else None
            yield dataclasses.replace(row, time_sample_rounds=tuple(split)) if (
                drawn and split and sum(split) == len(drawn)) else row  # a stale record is left out


def _row(results, date: datetime, benchmark: str, op: str, params: dict[str, Any], time_s: float | None,
         stat: dict | None, drawn: list[float] | None = None) -> BenchRow:
    tokens, hidden = params.get("shape", (params.get("n"), params.get("n")))
    dtype = params.get("dtype")
    formula = BYTES_MOVED.get(op)
    bytes_moved = (None if formula is None or dtype is None or tokens is None
                   else formula(tokens, hidden, element_bytes(dtype)))
    modelled = work(op, params, element_bytes(dtype)) if dtype else None  # a stack or a matmul: FLOPs too
    flops, bytes_moved = modelled or (None, bytes_moved)
    per_s = None if time_s is None else 1 / time_s
    return BenchRow(
        machine=results.params["machine"], commit=results.commit_hash, date=date, env_name=results.env_name,
        benchmark=benchmark, op=op, params=";".join(f"{k}={_plain(v)}" for k, v in params.items()),
        backend=params.get("backend"), device=params.get("device"), dtype=dtype, tokens=tokens, hidden=hidden,
        depth=params.get("depth"), time_s=time_s, samples=None if stat is None else stat.get("repeat"),
        time_q25_s=None if stat is None else stat.get("q_25"), time_q75_s=None if stat is None else stat.get("q_75"),
        bytes_moved=bytes_moved, gbps=None if bytes_moved is None or per_s is None else bytes_moved * per_s / 1e9,
        roofline_gbps=None, roofline_fraction=None, time_samples_s=None if not drawn else tuple(drawn),
        preset=params.get("preset"), flops=flops, gflops=None if flops is None or per_s is None else flops * per_s / 1e9)


def _with_roofline(rows: list[BenchRow], cache_bytes: dict[str, int] | None = None) -> list[BenchRow]:
    """rows with the roofline of their device and shape (the best streaming kernel's GB/s among these rows),
    and a flag on every figure above it; cache_bytes: device -> its last-level cache, where recorded."""
    roofline: dict[tuple, float] = {}
    matmul: dict[tuple, float] = {}
    for r in rows:
        if r.op in ROOFLINE_OPS and r.gbps is not None:
            key = (r.device, r.tokens, r.hidden)
            roofline[key] = max(r.gbps, roofline.get(key, 0.0))
        if r.op == MATMUL_OP and r.gflops is not None:
            matmul[(r.device, r.dtype)] = max(r.gflops, matmul.get((r.device, r.dtype), 0.0))
    # a stack's bytes are judged against its device's roofline at the largest measured shape (out of cache)
    largest = {k[0]: v for k, v in sorted(roofline.items(), key=lambda kv: (kv[0][1] or 0) * (kv[0][2] or 0))}
    out = []
    for r in rows:
        cache = (cache_bytes or {}).get(r.device)
        peak = None if r.gbps is None else largest.get(r.device) if r.op in PRESET_OPS else roofline.get(
            (r.device, r.tokens, r.hidden))
        mm = matmul.get((r.device, r.dtype)) if r.gflops is not None else None
        r = dataclasses.replace(r, matmul_peak_gflops=mm, matmul_fraction=mm and r.gflops / mm)
        flag = over_roofline_flag(r.op, r.bytes_moved, r.gbps, peak, r.samples, r.time_q75_s, cache)
        out.append(dataclasses.replace(r, roofline_gbps=peak, roofline_fraction=peak and r.gbps / peak, flag=flag,
                                       cache_bytes=cache))
    return out


def _cache_bytes(results) -> dict[str, int]:
    """device -> the last-level cache size the suite recorded in this results file (none: {})."""
    if CACHE_BENCHMARK not in results.get_all_result_keys():
        return {}
    params = results.get_result_params(CACHE_BENCHMARK)
    values = results.get_result_value(CACHE_BENCHMARK, params)
    return {_literal(device): int(v) for (device,), v in zip(itertools.product(*params), values)
            if v is not None and not math.isnan(v)}


def _literal(text: str) -> Any:
    """asv stores parameter values as repr() strings: "'torch'", "(512, 1024)", "8"."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _plain(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())

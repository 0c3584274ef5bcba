"""The asv -> Parquet export (reports/bench_export.py), and the asv suite's import hygiene.

tests/fixtures/asv_results is a real `asv run --python=same --quick --set-commit-hash ...` of the default
grid on the 2-core development VM, trimmed to four benchmarks (how to re-record it: docs/benchmarks.md).
Its times are what that run measured; the tests check the export's arithmetic on them, not their size.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resconf.reports import bench_export
from resconf.reports.bytes_moved import BYTES_MOVED
from resconf.reports.flops import MATMUL_OP, PRESET_OPS

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "asv_results"
RESULT_FILE = FIXTURE / "vm" / "2d1e2876-existing-py_work_venv_bin_python3.json"
RMS_FORWARD = "bench_fused.AddRMSNormForward.time_add_rmsnorm_forward"
BENCHMARK_MODULES = ("benchmarks.common", "benchmarks.numpy_baseline", "benchmarks.bench_fused",
                     "benchmarks.bench_stack", "benchmarks.bench_roofline", "benchmarks.bench_presets",
                     "benchmarks.bench_matmul", "benchmarks.slowed", "resconf.reports.bench_export")
FRAMEWORKS = ("torch", "jax", "numba", "triton")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("export") / "bench.parquet"
    assert bench_export.main([str(FIXTURE), "-o", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["bench.parquet"], "the temporary file was left behind"
    table = pq.read_table(out)
    assert table.schema.equals(bench_export.SCHEMA), f"schema changed:\n{table.schema}"
    assert table.schema.metadata[b"resconf_bench_schema_version"] == str(bench_export.SCHEMA_VERSION).encode()
    return table.to_pylist()


def _row(rows: list[dict], op: str, params: str) -> dict:
    matches = [r for r in rows if r["op"] == op and r["params"] == params]
    assert len(matches) == 1, f"expected one {op} row with params {params}, got {len(matches)}"
    return matches[0]


def _recorded_times(benchmark: str) -> list[float | None]:
    """asv's stored results of one benchmark, in parameter-product order (NaN: skipped, None: failed)."""
    return json.loads(RESULT_FILE.read_text())["results"][benchmark][0]


def test_one_row_per_timed_combination(rows):
    results = json.loads(RESULT_FILE.read_text())["results"]
    timed = sum(v is not None and not math.isnan(v) for values, *_ in results.values() for v in values)
    assert len(rows) == timed == 14
    assert {r["machine"] for r in rows} == {"vm"}
    assert {r["commit"] for r in rows} == {"2d1e2876ebd5582e7a17745f3f6c7912d65b9ee4"}


def test_params_are_split_into_columns(rows):
    r = _row(rows, "add_rmsnorm_forward", "backend=numpy;device=cpu;dtype=float32;shape=8192x4096")
    assert (r["benchmark"], r["backend"], r["device"], r["dtype"], r["tokens"], r["hidden"], r["depth"]) == \
        (RMS_FORWARD, "numpy", "cpu", "float32", 8192, 4096, None)
    assert r["time_s"] == _recorded_times(RMS_FORWARD)[0]  # numpy, cpu, float32 is the product's first
    assert r["samples"] == 1  # a --quick run times one call


def test_gbps_is_bytes_moved_over_time(rows):
    r = _row(rows, "add_rmsnorm_forward", "backend=numpy;device=cpu;dtype=float32;shape=8192x4096")
    # read x, residual, weight; write out, new residual; 4 bytes each
    assert r["bytes_moved"] == (4 * 8192 * 4096 + 4096) * 4 == 536_887_296
    bf16 = _row(rows, "add_rmsnorm_forward", "backend=torch;device=cpu;dtype=bfloat16;shape=8192x4096")
    assert bf16["bytes_moved"] == r["bytes_moved"] // 2
    for row in rows:
        if row["bytes_moved"] is not None:
            assert row["gbps"] == pytest.approx(row["bytes_moved"] / row["time_s"] / 1e9, rel=1e-12)


def test_roofline_is_the_copy_on_the_same_device_and_shape(rows):
    copy = _row(rows, "copy", "device=cpu;dtype=float32;shape=8192x4096")
    assert copy["bytes_moved"] == 2 * 8192 * 4096 * 4
    assert copy["roofline_fraction"] == 1.0
    for row in rows:
        if row["gbps"] is not None:
            assert row["roofline_gbps"] == copy["gbps"]
            assert row["roofline_fraction"] == pytest.approx(row["gbps"] / copy["gbps"], rel=1e-12)


def test_stack_rows_have_a_time_but_no_bandwidth(rows):
    stack = [r for r in rows if r["op"] == "pre_ln_mlp_stack_forward_backward"]
    assert {r["backend"] for r in stack} == {"torch", "jax"}
    assert all((r["depth"], r["tokens"], r["hidden"]) == (4, 512, 256) for r in stack)
    assert all(r["bytes_moved"] is None and r["gbps"] is None and r["roofline_fraction"] is None for r in stack)


def test_not_an_asv_results_directory_exits_2(tmp_path, capsys):
    assert bench_export.main([str(tmp_path), "-o", str(tmp_path / "x.parquet")]) == 2
    assert "benchmarks.json" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def _fresh_python(code: str) -> object:
    """Run code in a new interpreter at the repository root (where asv imports `benchmarks` from); its
    last stdout line is JSON."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_benchmark_modules_import_no_framework():
    loaded = _fresh_python(
        f"import importlib, json, sys\n"
        f"for m in {BENCHMARK_MODULES!r}: importlib.import_module(m)\n"
        f"print(json.dumps([f for f in {FRAMEWORKS!r} if f in sys.modules]))")
    assert loaded == [], f"importing the asv suite imported {loaded}: import frameworks in setup, via the backend"


def test_every_bandwidth_benchmark_has_a_formula_and_the_fixture_is_current():
    names = _fresh_python(
        "import inspect, json\n"
        "from benchmarks import bench_fused, bench_matmul, bench_presets, bench_roofline, bench_stack\n"
        "print(json.dumps([f'{m.__name__.split(\".\")[-1]}.{c}.{f}'\n"
        "                  for m in (bench_fused, bench_matmul, bench_presets, bench_roofline, bench_stack)\n"
        "                  for c, cls in vars(m).items() if inspect.isclass(cls) and not c.startswith('_')\n"
        "                  for f in dir(cls) if f.startswith('time_')]))")
    ops = {name.rsplit(".", 1)[-1].removeprefix("time_") for name in names if not name.startswith("bench_stack.")}
    modelled = set(BYTES_MOVED) | set(PRESET_OPS) | {MATMUL_OP}  # bytes, or FLOPs and bytes (reports/flops.py)
    assert ops <= modelled, f"no bytes-moved formula for {sorted(ops - modelled)}"
    recorded = set(json.loads(RESULT_FILE.read_text())["results"])
    assert recorded <= set(names), f"the fixture names benchmarks the suite no longer has: {recorded - set(names)}"


def _synthetic(op: str, gbps_target: float, tokens: int = 8192, samples: int = 10, spread: float = 0.0):
    """A row of `op` at (tokens, 4096) float32 whose time gives gbps_target GB/s; quartiles +-spread."""
    nbytes = BYTES_MOVED[op](tokens, 4096, 4)
    t = nbytes / gbps_target / 1e9
    return bench_export.BenchRow(
        machine="m", commit="c", date=None, env_name="e", benchmark=f"b.{op}", op=op, params="", backend=None,
        device="cpu", dtype="float32", tokens=tokens, hidden=4096, depth=None, time_s=t, samples=samples,
        time_q25_s=t * (1 - spread), time_q75_s=t * (1 + spread), bytes_moved=nbytes, gbps=gbps_target,
        roofline_gbps=None, roofline_fraction=None)


@pytest.mark.parametrize("tokens, samples, spread, reason", [
    (8192, 10, 0.0, "unexplained"),  # 537 MB moved: not in a 32 MiB cache, measured, no spread
    (128, 10, 0.0, "cache-resident"),  # 8.4 MB moved: fits
    (8192, 1, 0.0, "one-sample"),  # asv --quick
    (8192, 10, 0.2, "within-spread"),  # at the 75th percentile's time it is below the roofline
])
def test_a_figure_above_the_roofline_is_flagged_with_the_reason_found(tokens, samples, spread, reason):
    """The roofline is the best of copy and add (one thread, all cores); a fused op 10 % above it is flagged."""
    rows = [_synthetic("copy", 20.0, tokens), _synthetic("add_all_cores", 25.0, tokens),
            _synthetic("add_rmsnorm_forward", 27.5, tokens, samples, spread)]
    copy, add, fused = bench_export._with_roofline(rows, {"cpu": 32 * 2 ** 20})
    assert (copy.roofline_gbps, add.roofline_fraction) == (25.0, 1.0)
    assert copy.flag is None and add.flag is None, "the kernels that define the roofline are never above it"
    assert fused.roofline_fraction == pytest.approx(1.1)
    assert fused.flag.startswith(f"over-roofline {reason}: ")
    assert fused.flag.endswith("byte model add_rmsnorm_forward: 4·T·H + H elements x itemsize")


def test_a_figure_at_or_below_the_roofline_has_no_flag():
    rows = [_synthetic("copy", 20.0), _synthetic("add_rmsnorm_forward", 20.0)]
    assert [r.flag for r in bench_export._with_roofline(rows, {"cpu": 2 ** 40})] == [None, None]


class _CacheResults:
    """What _cache_bytes reads of an asv results file holding the track_ benchmark's value."""

    def get_all_result_keys(self):
        return [bench_export.CACHE_BENCHMARK]

    def get_result_params(self, key):
        return [["'cpu'"]]

    def get_result_value(self, key, params):
        return [33554432.0]


def test_the_recorded_cache_size_reaches_the_flag():
    assert bench_export._cache_bytes(_CacheResults()) == {"cpu": 32 * 2 ** 20}
    assert bench_export.CACHE_BENCHMARK.rsplit(".", 1)[-1] == "track_last_level_cache_bytes"
    from benchmarks import bench_roofline

    assert hasattr(bench_roofline.LastLevelCache, "track_last_level_cache_bytes")
    if Path("/sys/devices/system/cpu/cpu0/cache").is_dir():
        assert bench_roofline.last_level_cache_bytes("cpu") >= 2 ** 20  # every x86 or arm server CPU's is


def test_recorded_rounds_reach_the_export(tmp_path):
    """Two `asv run --append-samples` rounds, each followed by `python -m resconf.reports.sample_rounds`: the
    export splits every combination's samples into the two rounds; a record that no longer adds up is dropped."""
    import shutil

    from resconf.reports import sample_rounds

    results = tmp_path / "asv" / "results"
    shutil.copytree(FIXTURE, results)
    path = results / "vm" / RESULT_FILE.name
    data = json.loads(path.read_text())
    columns, entry = data["result_columns"], data["results"][RMS_FORWARD]
    entry += [None] * (len(columns) - len(entry))
    timed = [t is not None and not math.isnan(t) for t in entry[0]]

    def a_round(n: int) -> None:  # what asv's append does: the new samples after the old
        old = entry[columns.index("samples")] or [None] * len(timed)
        entry[columns.index("samples")] = [(o or []) + [0.01] * n if ok else None for o, ok in zip(old, timed)]
        path.write_text(json.dumps(data))

    commit = data["commit_hash"]
    for n in (3, 5):
        a_round(n)
        assert sample_rounds.main([str(results), commit[:8]]) == 0
    assert (tmp_path / "asv" / "rounds" / "vm" / RESULT_FILE.name).is_file()  # beside asv's folder, not in it
    split = [r.time_sample_rounds for r in bench_export.read_rows(results) if r.benchmark == RMS_FORWARD and r.time_s]
    assert split and all(s == (3, 5) for s in split), split
    a_round(1)  # a round not recorded: the record says 8 of 9 samples, so the export leaves it out
    assert all(r.time_sample_rounds is None for r in bench_export.read_rows(results) if r.benchmark == RMS_FORWARD)
    assert sample_rounds.main([str(results), "0" * 8]) == 1  # no results of that commit

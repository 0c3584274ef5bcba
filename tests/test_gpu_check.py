"""tools/gpu-check.sh, the prepared GPU run: its dry mode on the CPU proves the plumbing (every step, the
summary, the Parquet files, what the device machine can send back); the export and the budget are checked
on their own, fast."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resconf.conformance.results import SCHEMA as RESULTS_SCHEMA
from resconf.reports.bench_export import SCHEMA as BENCH_SCHEMA
from resconf.reports.bytes_moved import BYTES_MOVED

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu-check.sh"
STEPS = ("env", "install", "pytest-cuda", "check-triton_fused", "check-torch", "check-jax", "check-liger",
         "bench-roofline", "bench-triton_fused", "bench-torch", "bench-jax", "bench-liger", "bench-torch_compile",
         "bench-presets-torch", "bench-matmul-torch", "bench-presets-jax", "bench-matmul-jax",
         "check-merge", "bench-export")
OUTPUTS = {"summary.txt", "gpu-check.log", "conformance.parquet", "bench.parquet", "work.tar.gz"}
DEVICE_FILE_LIMIT = 8  # files the device machine sends back from $OUT (/work/.library/device/README.md)


def gpu_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script's own step timeouts bound it; this timeout only catches a hang of the script itself."""
    base = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_TIMEOUT_SCALE"}
    return subprocess.run(["bash", str(SCRIPT), *args, str(out)], capture_output=True, text=True, timeout=7200,
                          env={**base, "GPU_CHECK_PYTHON": sys.executable, **env})


def step_timeouts(out: Path) -> dict[str, str]:
    """step name -> the timeout it ran (or would have run) under, from steps.tsv in work.tar.gz."""
    with tarfile.open(out / "work.tar.gz") as tar:
        text = tar.extractfile("work/steps.tsv").read().decode()
    return {fields[0]: fields[3] for fields in (line.split("\t") for line in text.splitlines())}


def step_lines(summary: str) -> dict[str, str]:
    """step name -> its status, from the summary's Steps table."""
    return {m[1]: m[2] for m in re.finditer(r"^  (\S+)\s+(passed|skipped|failed|timed out|not run)\s+\d+ s",
                                            summary, re.M)}


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu-check")
    return out, gpu_check(out, "--dry")


@pytest.mark.heavy  # the dry run: 160 s on the 2-core VM at load average 8
def test_dry_run_passes_every_step(dry):
    out, proc = dry
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert summary.startswith("resconf GPU check: PASSED"), summary
    steps = step_lines(summary)
    assert list(steps) == list(STEPS), summary
    assert all(status in ("passed", "skipped") for status in steps.values()), summary
    for name in ("check-triton_fused", "check-torch", "check-jax", "bench-triton_fused", "bench-torch"):
        assert steps[name] == "passed", f"{name} must run on the CPU too:\n{summary}"
    assert summary in proc.stdout, "the summary ends the output (the device tool returns its last 12,000 characters)"
    assert "Conformance on cpu" in summary and "Throughput on cpu" in summary


@pytest.mark.heavy
def test_dry_run_outputs_fit_the_device_return(dry):
    out, _ = dry
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert {str(p) for p in files} == OUTPUTS, files
    assert len(files) <= DEVICE_FILE_LIMIT
    with tarfile.open(out / "work.tar.gz") as tar:
        names = tar.getnames()
    assert "work/steps.tsv" in names and "work/env.json" in names
    log = (out / "gpu-check.log").read_text()
    for name in STEPS:
        assert f"] {name}: " in log, f"{name} missing from gpu-check.log"


@pytest.mark.heavy
def test_dry_run_bench_parquet(dry):
    out, _ = dry
    table = pq.read_table(out / "bench.parquet")
    assert table.schema.names[:len(BENCH_SCHEMA)] == BENCH_SCHEMA.names, "bench-export's columns first, in order"
    assert table.schema.metadata[b"resconf_bench_schema_version"] == BENCH_SCHEMA.metadata[b"resconf_bench_schema_version"]
    rows = table.to_pylist()
    assert rows and all(r["time_s"] > 0 and r["gbps"] > 0 for r in rows if r["op"] in BYTES_MOVED)
    assert {"copy", "add", "add_rmsnorm_forward", "add_layernorm_forward_backward"} <= {r["op"] for r in rows}
    assert {"torch", "jax", "triton_fused"} <= {r["backend"] for r in rows}
    assert {r["dtype"] for r in rows if r["backend"]} == {"bfloat16", "float32"}
    fused = [r for r in rows if r["backend"] and r["op"] in BYTES_MOVED]
    assert all(r["device"] == "cpu" and r["roofline_fraction"] > 0 and r["samples"] >= 1 for r in fused)
    compute = {(r["op"], r["backend"]) for r in rows if r["gflops"]}  # the preset stacks and the matmul peak
    assert {(op, b) for op in ("preset_stack_forward", "preset_stack_forward_backward", "matmul")
            for b in ("torch", "jax")} <= compute
    assert all(r["params"] == f"backend={r['backend']};device=cpu;dtype={r['dtype']};shape={r['tokens']}x{r['hidden']}"
               for r in fused)


@pytest.mark.heavy
def test_dry_run_conformance_parquet(dry):
    out, _ = dry
    table = pq.read_table(out / "conformance.parquet")
    assert table.schema.names == RESULTS_SCHEMA.names
    rows = table.to_pylist()
    assert {"torch", "jax", "triton_fused"} <= {r["backend"] for r in rows}
    assert {r["device"] for r in rows} == {"cpu"}
    assert not [r for r in rows if r["outcome"] in ("failed", "xpassed")]
    assert json.loads(table.schema.metadata[b"resconf_coverage"]).keys() >= {"torch", "jax", "triton_fused"}


def test_no_budget_means_every_step_is_recorded_and_the_run_fails(tmp_path):
    """Steps that cannot start are recorded as 'not run', the last merges still run (and fail: no input),
    a summary is written and the exit status says so."""
    proc = gpu_check(tmp_path, "--dry", GPU_CHECK_BUDGET_S="0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("resconf GPU check: FAILED"), summary
    steps = step_lines(summary)
    assert list(steps) == list(STEPS), summary
    assert steps["pytest-cuda"] == "not run" and steps["check-merge"] == "failed", summary
    assert not (tmp_path / "work").exists() and (tmp_path / "work.tar.gz").is_file()


def test_dry_timeouts_are_scaled_so_a_busy_machine_slows_the_run_instead_of_failing_it(tmp_path):
    """A dry run proves the plumbing, not the speed: every step's timeout is multiplied by
    GPU_CHECK_TIMEOUT_SCALE, by default 1 + ceil(load average / CPUs), at least 2."""
    gpu_check(tmp_path / "set", "--dry", GPU_CHECK_BUDGET_S="0", GPU_CHECK_TIMEOUT_SCALE="3")
    limits = step_timeouts(tmp_path / "set")
    assert (limits["env"], limits["pytest-cuda"], limits["check-jax"], limits["bench-torch"]) == \
        ("180", "360", "450", "225"), limits
    assert limits["check-merge"] == "90", limits  # the merges too, outside the budget

    gpu_check(tmp_path / "auto", "--dry", GPU_CHECK_BUDGET_S="0")
    scale = int(re.search(r"timeouts x(\d+)", (tmp_path / "auto" / "gpu-check.log").read_text())[1])
    assert scale >= 2 and step_timeouts(tmp_path / "auto")["check-torch"] == str(120 * scale)


def test_a_timeout_scale_that_is_not_a_whole_number_is_usage(tmp_path):
    for bad in ("0", "1.5", "x"):
        proc = gpu_check(tmp_path, "--dry", GPU_CHECK_BUDGET_S="0", GPU_CHECK_TIMEOUT_SCALE=bad)
        assert proc.returncode == 2 and f"GPU_CHECK_TIMEOUT_SCALE={bad}: expected a whole number" in proc.stderr


def test_usage(tmp_path):
    for args in ((), ("--bogus", str(tmp_path))):
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and "gpu-check.sh OUT" in proc.stderr, proc.stderr


def test_export_computes_gbps_and_the_copy_roofline(tmp_path, monkeypatch):
    """GB/s = bytes_moved / time with reports/bytes_moved.py; the roofline is the copy's GB/s at that shape."""
    base = {"device": "cuda", "dtype": "float32", "tokens": 1024, "hidden": 512, "reason": "", "samples": 5,
            "time_s_min": None, "calls_per_sample": 10, "setup_s": 1.0}
    rows = [
        {**base, "status": "timed", "benchmark": "bench_roofline.Copy.time_copy", "op": "copy", "backend": None,
         "time_s": 1e-3, "time_s_pipelined": 5e-4},
        {**base, "status": "timed", "benchmark": "bench_fused.AddRMSNormForward.time_add_rmsnorm_forward",
         "op": "add_rmsnorm_forward", "backend": "triton_fused", "dtype": "bfloat16", "time_s": 2e-3,
         "time_s_pipelined": None},
        {**base, "status": "skipped", "benchmark": "bench_roofline.CopyAllCores.time_copy_all_cores",
         "op": "copy_all_cores", "backend": None, "reason": "CPU only", "time_s": None, "time_s_pipelined": None},
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_bench.py"), "export", str(jsonl), "-o",
                           str(tmp_path / "b.parquet"), "--commit", "abc"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    copy, fused = pq.read_table(tmp_path / "b.parquet").to_pylist()
    copy_gbps = 2 * 1024 * 512 * 4 / 1e-3 / 1e9
    assert copy["gbps"] == pytest.approx(copy_gbps) and copy["roofline_fraction"] == pytest.approx(1.0)
    assert copy["gbps_pipelined"] == pytest.approx(2 * copy_gbps)
    assert fused["bytes_moved"] == (4 * 1024 * 512 + 512) * 2
    assert fused["gbps"] == pytest.approx(fused["bytes_moved"] / 2e-3 / 1e9)
    assert fused["roofline_fraction"] == pytest.approx(fused["gbps"] / copy_gbps)
    assert fused["gbps_pipelined"] is None and fused["commit"] == "abc"
    assert fused["params"] == "backend=triton_fused;device=cuda;dtype=bfloat16;shape=1024x512"
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import gpu_report  # the summary prints the report's own tables (reports/throughput.py), not a copy

    text = "\n".join(gpu_report.throughput_table(tmp_path / "b.parquet", "cuda"))
    assert text.startswith("Throughput on cuda") and "Back to back" in text
    assert "| device | op | dtype | shape | backend | time | spread | samples | GB/s | % of roofline |" in text


def test_the_preset_stacks_and_the_matmul_peak_run_through_their_asv_classes(tmp_path):
    """--suite presets and --suite matmul time bench_presets' and bench_matmul's classes (every preset and depth
    of the grid at the given shape; n from the shape) and export their FLOPs and % of the matmul peak."""
    tool, rows = ROOT / "tools" / "gpu_bench.py", tmp_path / "rows.jsonl"
    plan = ["--device", "cpu", "--dtypes", "float32", "--warmup", "0", "--samples", "2", "--min-sample-s", "0"]
    for suite, shapes in (("presets", "16x64"), ("matmul", "32x32")):
        proc = subprocess.run([sys.executable, str(tool), "time", "--backend", "torch", "--suite", suite, "--shapes",
                               shapes, "--out", str(rows), *plan], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(tool), "export", str(rows), "-o", str(tmp_path / "b.parquet")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    found = {(r["op"], r["preset"]): r for r in pq.read_table(tmp_path / "b.parquet").to_pylist()}
    ops = ("preset_stack_forward", "preset_stack_forward_backward")
    assert set(found) == {(op, p) for op in ops for p in ("gpt2", "llama")} | {("matmul", None)}
    matmul = found["matmul", None]
    assert (matmul["tokens"], matmul["hidden"], matmul["flops"]) == (32, 32, 2 * 32**3)
    for op in ops:
        stack = found[op, "llama"]
        assert (stack["tokens"], stack["hidden"], stack["depth"]) == (16, 64, 2) and stack["flops"] > 0
        assert stack["matmul_fraction"] == pytest.approx(stack["gflops"] / matmul["gflops"])

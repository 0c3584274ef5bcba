"""`resconf check` end to end: results written, failures explained, bad names reported, real backends pass."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resconf.backends.registry import installed_builtins
from resconf.conformance.results import SCHEMA, read_results

ROOT = Path(__file__).resolve().parents[1]


def resconf(*args: str, cwd: Path = ROOT, extra_path: str = "") -> subprocess.CompletedProcess:
    """`extra_path`: a folder put on sys.path too (a hand-made dist-info: an installed entry point)."""
    path = os.pathsep.join(p for p in (str(ROOT), extra_path) if p)
    return subprocess.run([sys.executable, "-m", "resconf.conformance.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})


def test_mutant_fails_with_property_counterexample_and_rerun(tmp_path):
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "tests.mutants:SkipDropped", "--output", str(out), "-k", "test_identity_block",
                   "--cover", "all")  # every case: which ones fail is the point
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED ID-1 backend=SkipDropped" in proc.stdout  # its own name; the rerun keeps the spelling
    assert "counterexample: Failing test case: test_identity_block(" in proc.stdout
    assert "rerun: resconf check --backend tests.mutants:SkipDropped" in proc.stdout
    table = read_results(out)
    assert table.schema.names == SCHEMA.names
    outcomes = {(r["config"], r["outcome"]) for r in table.to_pylist()}
    assert outcomes == {(f"placement={p},init={i},layer={layer}", "failed" if p == "pre" else "passed")
                        for p, i in (("pre", "zero"), ("rezero", "zero"), ("rezero", "rezero"))
                        for layer in ("block", "preset")}, "only the pre sublayers lost their skip"
    assert (tmp_path / "_r.summary.txt").read_text().startswith("resconf check summary, run ")


def check_unknown_backend(tmp_path: Path, extra_path: str = "") -> None:
    """A name that is no backend is a typo: refused (usage, exit 2) before any work, so no red row stays in
    the results; with nothing close to it, no suggestion (tests/test_check_inputs.py has the "did you mean").
    The built-ins are checked by name: a backend installed by entry point is listed after them."""
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "nosuch", "--backend", "numpy", "--output", str(out),
                   "-k", "test_identity_block and float32", extra_path=extra_path)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    head, tail = "resconf: unknown backend 'nosuch'; installed: ", " (or give package.module:attr)"
    assert line.startswith(head) and line.endswith(tail), line
    listed = line[len(head):-len(tail)].split(", ")
    assert listed[:len(installed_builtins())] == installed_builtins(), line
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def test_unknown_backend_is_one_line_and_nothing_runs(tmp_path):
    check_unknown_backend(tmp_path)


def test_unknown_backend_check_holds_with_a_backend_installed_by_entry_point(tmp_path):
    """What `pip install examples/user_torch_block` leaves behind, written by hand (a dist-info folder with
    an entry_points.txt): the project's own tests must still pass with it installed."""
    dist = tmp_path.parent / f"{tmp_path.name}-site" / "extra_backend-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[resconf.backends]\nzz_extra = extra_backend:Backend\n")
    check_unknown_backend(tmp_path, extra_path=str(dist.parent))
    proc = resconf("check", "--backend", "nosuch", "--output", str(tmp_path / "r.parquet"), extra_path=str(dist.parent))
    assert proc.stderr.rstrip().endswith(", zz_extra (or give package.module:attr)"), proc.stderr


def test_backend_that_cannot_load_is_reported_not_crashed(tmp_path):
    proc = resconf("check", "--backend", "tests.no_such_module:Backend", "--backend", "numpy",
                   "--output", str(tmp_path / "r.parquet"), "-k", "test_identity_block and float64")
    assert proc.returncode == 1
    assert "cannot import 'tests.no_such_module'" in proc.stderr
    rows = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert {r["backend"] for r in rows if r["outcome"] == "passed"} == {"numpy"}


# Heavy: the main job (`resconf check`, which CI runs right after the tests) gates numpy, torch, jax and every
# other installed backend the same way; repeating it here doubled CI's time.
@pytest.mark.heavy
@pytest.mark.parametrize("name", ["numpy"])
def test_correct_backend_passes_every_property(name, tmp_path):
    """The main job for one backend: every implemented property has passing rows, nothing fails."""
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", name, "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    properties = {r["property"] for r in rows if r["outcome"] == "passed"}
    expected = {f"{f}-{i}" for f, n in (("ID", 4), ("GR", 4), ("VG", 4), ("XB", 5), ("BI", 5)) for i in range(1, n + 1)}
    assert expected <= properties, f"no passing rows for {sorted(expected - properties)}"


@pytest.mark.heavy  # minutes (Triton's interpreter); tests/test_kernels.py and test_liger.py check them against the oracle
@pytest.mark.parametrize("name", [n for n in ("numba_fused", "triton_fused", "liger") if n in installed_builtins()])
def test_kernel_backend_passes_the_fused_properties(name, tmp_path):
    """The fused add+norm kernels (ours and Liger-Kernel's; Triton through its CPU interpreter) pass the
    fused contract, determinism and bad-input properties, and skip the block properties they do not claim."""
    out = tmp_path / "r.parquet"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", name, "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    passed = {r["property"] for r in rows if r["outcome"] == "passed"}
    assert {"XB-3", "XB-4", "BI-1", "BI-2", "BI-4"} <= passed, f"passing properties: {sorted(passed)}"


def test_a_device_the_machine_lacks_skips_each_backend_and_fails_the_run(tmp_path):
    """--device cuda on a machine without a GPU: every backend skipped and why, the oracle (a CPU
    reference) included, and the run fails (--require-device, on with --device): nothing ran on the device,
    which a CI job must not take for "all good" (tests/test_check_inputs.py: --no-require-device)."""
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the cuda run is a real one")
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--backend", "torch", "--device", "cuda", "--output", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [reason] = [line for line in proc.stderr.splitlines() if "no backend ran" in line]
    assert reason.startswith("resconf: --device cuda: no backend ran on the device: ")
    assert "numpy: backend 'numpy' runs on cpu, not on cuda" in reason and "torch: backend 'torch': device" in reason
    assert "backend numpy skipped: backend 'numpy' runs on cpu, not on cuda" in proc.stdout
    assert "backend torch skipped: backend 'torch': device 'cuda' asked for, but torch" in proc.stdout
    rows = pq.read_table(out).to_pylist()
    assert sorted((r["backend"], r["outcome"], r["device"]) for r in rows) == [("numpy", "skipped", "cuda"),
                                                                               ("torch", "skipped", "cuda")]


def test_an_unknown_device_is_one_line_naming_the_valid_ones(tmp_path):
    proc = resconf("check", "--device", "tpu", "--output", str(tmp_path / "r.parquet"))
    assert proc.returncode == 2
    assert "argument --device: invalid choice: 'tpu' (choose from 'cpu', 'cuda')" in proc.stderr
    assert not (tmp_path / "r.parquet").exists()

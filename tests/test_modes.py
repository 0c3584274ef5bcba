"""Execution modes (backends/modes.py): a case axis beside dtype. Eager keeps today's ids and results; a mode a
backend does not claim, or that needs CUDA, is skipped with the reason; each mode's baseline rounds as it does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from resconf.backends.config import BlockConfig
from resconf.backends.oracle.emulated import round_tf32
from resconf.backends.params import draw_params
from resconf.backends.registry import load_backend
from resconf.conformance import xfails
from resconf.conformance.results import SCHEMA, read_results, to_table
from tests.test_results_dataset import fake_row

ROOT = Path(__file__).resolve().parents[1]


def suite(*args: str, rows: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-p", "no:cacheprovider", "-q",
                           "--resconf-profile", "smoke", "--resconf-results-jsonl", str(rows), *args],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_unclaimed_and_cuda_only_modes_are_skipped_with_the_reason_and_recorded(tmp_path):
    rows = tmp_path / "rows.jsonl"
    proc = suite("--resconf-backend", "numpy", "--resconf-mode", "eager", "--resconf-mode", "compile",
                 "--resconf-mode", "tf32", "-k", "test_identity_block and float64 and pre-zero-block", rows=rows)
    assert proc.returncode == 0, proc.stdout[-2000:]
    got = {(r["test"].split("[")[1], r["mode"], r["outcome"], r["message"]) for r in map(json.loads, rows.open())}
    assert got == {("numpy-float64-pre-zero-block]", "eager", "passed", ""),
                   ("numpy-float64-compile-pre-zero-block]", "compile", "skipped",
                    "numpy on cpu does not claim mode compile"),
                   ("numpy-float64-tf32-pre-zero-block]", "tf32", "skipped", "mode tf32 runs on cuda only, not on "
                    "cpu: TF32 is a format of NVIDIA tensor cores (Ampere and later)")}


def test_a_version_3_file_reads_as_eager(tmp_path):
    old = [n for n in SCHEMA.names if n != "mode"]
    pq.write_table(to_table([fake_row("torch", "ID-1", "passed")]).select(old)
                   .replace_schema_metadata({"resconf_schema_version": "3"}), tmp_path / "v3.parquet")
    [got] = read_results(tmp_path / "v3.parquet").to_pylist()
    assert got["mode"] == "eager"


def test_an_expected_failure_may_name_a_mode(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[[xfail]]\nproperty = "ID-1"\nmode = "compile"\nreason = "r"\n')
    [entry] = xfails.parse(path, backend="torch")
    names = frozenset({"torch"})
    assert entry.matches(names, "ID-1", "test_identity_block", {"dtype": "float32", "mode": "compile"})
    assert not entry.matches(names, "ID-1", "test_identity_block", {"dtype": "float32", "mode": "eager"})
    path.write_text('[[xfail]]\nproperty = "ID-1"\nmode = "jit"\nreason = "r"\n')
    with pytest.raises(pytest.UsageError, match="mode 'jit' is not a mode"):
        xfails.parse(path, backend="torch")


def test_tf32_rounds_to_ten_significand_bits_to_nearest_even():
    ulp = 2.0**-10
    x = np.array([1 + ulp, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2.0**-20, np.inf, np.nan], dtype=np.float32)
    got = round_tf32(x)
    assert list(got[:4]) == [1 + ulp, 1.0, 1 + 2 * ulp, 1 + ulp] and np.isinf(got[4]) and np.isnan(got[5])


def test_a_backend_refuses_a_mode_it_does_not_claim():
    with pytest.raises(ValueError, match="does not claim mode 'compile'"):
        load_backend("numpy").in_mode("compile")


CFG = BlockConfig(placement="pre", norm="rmsnorm", branch="mlp", init="standard", depth=2, d_model=8, n_heads=2)


def _case():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32).astype(np.float64)
    return draw_params(CFG, 0), x


def test_torch_compile_mode_compiles_and_agrees_with_eager():
    pytest.importorskip("torch")
    from resconf.backends.torch import modes as torch_modes
    params, x = _case()
    torch = load_backend("torch")
    before = torch_modes.COMPILE["graphs"]
    compiled = torch.in_mode("compile").stack_forward(CFG, params, x, "float32").states
    assert torch_modes.COMPILE["graphs"] > before, "compile mode ran without compiling"
    eager = torch.stack_forward(CFG, params, x, "float32").states
    assert np.max(np.abs(compiled - eager)) <= 1e-5 * np.max(np.abs(eager))


def test_jax_default_precision_traces_another_program():
    pytest.importorskip("jax")
    params, x = _case()
    jax = load_backend("jax")
    moded = jax.in_mode("default_precision")
    assert (jax._static(CFG).precision, moded._static(CFG).precision) == ("highest", "default")
    on_cpu = moded.stack_forward(CFG, params, x, "float32").states  # XLA:CPU computes float32 at full precision
    np.testing.assert_array_equal(on_cpu, jax.stack_forward(CFG, params, x, "float32").states)

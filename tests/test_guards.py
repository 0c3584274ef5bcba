"""Guards that make `resconf check` safe to gate merges on: it fails a run that covered less than the
backend claims, that tested nothing or nothing at all, and it holds expected-failure files to account."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resconf.conformance.harness_rows import rerun_line
from resconf.conformance.options import CheckOptions
from resconf.conformance.results import read_results

ROOT = Path(__file__).resolve().parents[1]
BLOCK_F64 = "test_identity_block and float64 and not preset"  # 3 quick cases: pre/zero, rezero/zero, rezero/rezero


def resconf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resconf.conformance.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def rows(path: Path) -> list[dict]:
    return read_results(path).to_pylist()


def xfail_file(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "xfails.toml"
    path.write_text("".join("[[xfail]]\n" + "".join(f'{k} = "{v}"\n' for k, v in e.items()) for e in entries))
    return path


# --- coverage ---

def test_claimed_dtype_with_no_case_fails_the_run(tmp_path):
    """A plugin drops every float16 case (and, for speed, all but test_identity_block) after collection;
    numpy claims float16, so the run must fail, naming the property and the dtype. No -k: a gate run."""
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--output", str(out), "--", "-p", "tests.broken_backends")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    got = rows(out)
    assert {r["outcome"] for r in got if r["property"] == "ID-1"} == {"passed"}
    [gap] = [r for r in got if r["property"] == "GUARD" and r["config"] == "covers=ID-1"]
    assert gap["outcome"] == "failed" and gap["dtype"] == "float16"
    assert gap["message"].startswith("no result for ID-1 in float16 (the backend claims it)")
    assert "0 selected (deselected)" in gap["message"]
    # properties deselected whole are caught as well: every one the suite collected but ID-1
    guarded = {r["config"].removeprefix("covers=") for r in got if r["property"] == "GUARD"}
    assert {"ID-2", "GR-1", "VG-1"} <= guarded and "FAILED GUARD backend=numpy" in proc.stdout


def test_with_k_missing_coverage_only_warns(tmp_path):
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--output", str(out), "-k", BLOCK_F64)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "warning: -k/-m chose a subset" in proc.stdout
    assert {r["property"] for r in rows(out)} == {"ID-1"}


def test_backend_that_tested_nothing_fails(tmp_path):
    """No placement claimed: every case is skipped. Skips are honest, but a gate that checked nothing fails."""
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--backend", "tests.broken_backends:ClaimsNothing",
                   "--output", str(out), "-k", BLOCK_F64)
    assert proc.returncode == 1
    got = rows(out)
    assert {r["outcome"] for r in got if r["backend"] == "numpy"} == {"passed"}
    [nothing] = [r for r in got if r["property"] == "GUARD"]
    assert nothing["backend"] == "claims-nothing"  # the backend's own name, not the spelling that selected it
    assert nothing["message"].startswith("tested nothing: all 3 cases were skipped, none ran; e.g. ")
    assert "does not claim placement" in nothing["message"]


def test_module_skipped_whole_fails_even_with_k(tmp_path):
    """A module that skips itself at import (importorskip) takes its properties with it, silently: fail."""
    module = tmp_path / "test_needs_framework.py"
    module.write_text('import pytest\npytest.importorskip("no_such_framework")\n')
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--output", str(out), "-k", BLOCK_F64, "--", str(module))
    assert proc.returncode == 1
    [row] = [r for r in rows(out) if r["property"] == "GUARD"]
    assert row["message"].startswith(f"{module} was skipped whole at collection")
    assert "no_such_framework" in row["message"]


def test_nothing_collected_fails(tmp_path):
    """pytest's exit status 5 (no test selected) is a failed run, not a pass."""
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--output", str(out), "-k", "no_such_test")
    assert proc.returncode == 1
    [row] = rows(out)
    assert (row["property"], row["outcome"]) == ("RUN", "failed")
    assert row["message"].startswith("no test ran (pytest exit status 5")
    assert row["rerun"] == "resconf check --backend numpy --device cpu --profile ci -k no_such_test"


def test_rerun_lines_keep_the_selection_shell_quoted():
    opts = CheckOptions(backends=("tests.mutants:SkipDropped",), xfails=(Path("my xfails.toml"),),
                        pytest_args=("-k", "identity and not rezero", "-p", "tests.broken_backends"))
    assert rerun_line("tests.mutants:SkipDropped", opts) == (
        "resconf check --backend tests.mutants:SkipDropped --device cpu --profile ci --xfails 'my xfails.toml' "
        "-k 'identity and not rezero' -- -p tests.broken_backends")


# --- expected-failure files ---

def test_entry_matching_nothing_fails_the_run_and_is_named(tmp_path):
    """No -k (with -k an entry may match only deselected cases). The stale entry names SkipDropped, so it
    fails SkipDropped's run, not numpy's; the plugin keeps the run short."""
    stale = dict(backend="tests.mutants:SkipDropped", property="ID-1", test="test_no_such_case", reason="stale")
    path = xfail_file(tmp_path, stale)
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--backend", "tests.mutants:SkipDropped", "--xfails", str(path),
                   "--output", str(out), "--", "-p", "tests.broken_backends")
    assert proc.returncode == 1
    got = rows(out)
    [run] = [r for r in got if r["property"] == "RUN"]
    assert run["backend"] == "SkipDropped"  # its own name: the worker loaded it before the entry was refused
    assert "match no collected case" in run["message"]
    assert f"{path}: backend=tests.mutants:SkipDropped, property=ID-1, test=test_no_such_case" in run["message"]
    assert {r["outcome"] for r in got if r["backend"] == "numpy" and r["property"] == "ID-1"} == {"passed"}


def test_strict_xfail_that_passes_is_xpassed_and_fails(tmp_path):
    path = xfail_file(tmp_path, dict(backend="numpy", property="ID-1", test="test_identity_block[numpy-float64-pre",
                                     reason="pretend numpy drops its skip"))
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--xfails", str(path), "--output", str(out), "-k", BLOCK_F64)
    assert proc.returncode == 1
    [row] = [r for r in rows(out) if "pre-zero" in r["test"]]
    assert row["outcome"] == "xpassed"
    assert row["message"] == ("passed, but an expected-failure entry says it fails (stale? remove it): "
                              "pretend numpy drops its skip")
    assert "XPASSED ID-1 backend=numpy" in proc.stdout


def test_skip_xfails_turns_expected_failures_back_into_failures(tmp_path):
    path = xfail_file(tmp_path, dict(backend="tests.mutants:SkipDropped", property="ID-1",
                                     test="test_identity_block[SkipDropped-float64-pre", reason="no skip"))
    args = ["check", "--backend", "tests.mutants:SkipDropped", "--xfails", str(path), "--profile", "smoke",
            "-k", BLOCK_F64]
    expected = resconf(*args, "--output", str(tmp_path / "x.parquet"))
    assert expected.returncode == 0, expected.stdout[-3000:]
    skipped = resconf(*args, "--skip-xfails", "--output", str(tmp_path / "s.parquet"))
    assert skipped.returncode == 1
    outcome = {r["config"]: r["outcome"] for r in rows(tmp_path / "x.parquet")}
    assert outcome["placement=pre,init=zero,layer=block"] == "xfailed"
    outcome = {r["config"]: r["outcome"] for r in rows(tmp_path / "s.parquet")}
    assert outcome == {"placement=pre,init=zero,layer=block": "failed", "placement=rezero,init=zero,layer=block": "passed",
                       "placement=rezero,init=rezero,layer=block": "passed"}


def test_entry_without_reason_is_a_one_line_usage_error(tmp_path):
    path = xfail_file(tmp_path, dict(backend="numpy", property="ID-1"))
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--xfails", str(path), "--output", str(out), "-k", BLOCK_F64)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"resconf: {path}: entry 1 needs property and reason; "
                                        "missing ['reason'], unknown keys []"]
    assert not out.exists(), "nothing ran"


# --- a backend's own hooks failing ---

BROKEN = "tests.broken_backends:"


@pytest.fixture(scope="module")
def hooks_fail(tmp_path_factory):
    """Backends whose stack_forward raises a chained exception, whose capabilities raise, whose versions()
    raises, side by side."""
    out = tmp_path_factory.mktemp("hooks") / "r.parquet"
    names = ("RaisesChained", "CapabilitiesRaise", "VersionsRaise")
    proc = resconf("check", *(arg for n in names for arg in ("--backend", BROKEN + n)), "--profile", "smoke",
                   "-n", "1", "--output", str(out), "-k", BLOCK_F64)
    by_backend: dict[str, list[dict]] = {}
    for row in rows(out):
        by_backend.setdefault(row["backend"], []).append(row)
    return proc, by_backend


def test_a_chained_exception_records_the_one_raised(hooks_fail):
    proc, got = hooks_fail
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert len(got["raises-chained"]) == 3
    assert {r["message"] for r in got["raises-chained"]} == {"RuntimeError: stack_forward could not find its weights"}


def test_capabilities_that_raise_are_a_load_failure_in_one_line(hooks_fail):
    proc, got = hooks_fail
    line = (f"backend '{BROKEN}CapabilitiesRaise' could not be loaded on cpu: its capabilities raised ValueError: "
            "no capabilities today")
    assert f"resconf: {line}" in proc.stderr.splitlines(), proc.stderr
    [run] = got[BROKEN + "CapabilitiesRaise"]  # never loaded: known only by its spelling
    assert (run["property"], run["outcome"], run["message"]) == ("RUN", "failed", f"did not run: {line}")


def test_versions_that_raise_are_recorded_and_every_case_runs(hooks_fail):
    _, got = hooks_fail
    assert [r["outcome"] for r in got["versions-raise"]] == ["passed"] * 3
    assert {r["backend_versions"] for r in got["versions-raise"]} == {
        '{"error": "versions() raised ImportError: no module named \'mykernels\'"}'}


def test_two_backends_of_one_name_are_refused():
    """Test ids, rows and expected failures go by a backend's `name`: two different backends that share
    one would mix their results. (One backend by two spellings is one backend: it runs once.)"""
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-o", "addopts=", "-p", "no:cacheprovider",
           "-q", "--collect-only", "-k", "test_identity_block and float64", "--resconf-backend", "numpy",
           "--resconf-backend", "resconf.backends.oracle.numpy_ref:NumpyReference"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    once = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert once.returncode == 0 and "[numpy-float64-" in once.stdout and "[numpy0-" not in once.stdout, once.stdout
    cmd[-3:] = ["tests.mutants:BlockMutant", "--resconf-backend", "tests.mutants:SwapMutant"]
    both = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert both.returncode == 4
    assert ("ERROR: backends 'tests.mutants:BlockMutant' and 'tests.mutants:SwapMutant' are both named 'mutant'"
            in both.stderr), both.stderr

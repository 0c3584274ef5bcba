"""`resconf check`'s front end: where it writes (never into the user's package layout, never over a file it
did not write), what it refuses before any worker starts (one line, exit 2, nothing written), and the
durations file under damage and concurrency."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resconf.conformance import shards

ROOT = Path(__file__).resolve().parents[1]
FAST = "test_identity_block and float64 and pre and not preset"  # one case


def resconf(*args: str, cwd: Path, module: str = "resconf.conformance.cli",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300)


def check(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return resconf("check", "--backend", "numpy", "-n", "1", "-k", FAST, *args, cwd=cwd)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The refusal: exit 2, one line on stderr, no worker started."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resconf"), proc.stderr
    assert "checking backend" not in proc.stdout + proc.stderr
    return lines[0]


def nothing_written(folder: Path) -> bool:
    return not any(p.name != "keep" for p in folder.iterdir())


# --- 1. the default output folder ---------------------------------------------------------------------

def test_default_output_keeps_a_flat_layout_project_buildable(tmp_path):
    """The default results folder is .resconf/: setuptools' flat-layout discovery still finds one package
    (with reports/ beside mykernels/ it refused: "Multiple top-level packages discovered")."""
    (tmp_path / "mykernels").mkdir()
    (tmp_path / "mykernels" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n'
                                             'build-backend = "setuptools.build_meta"\n\n'
                                             '[project]\nname = "mykernels"\nversion = "0.1"\n')
    proc = check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [result] = (tmp_path / ".resconf" / "results").glob("date=*/run-*.parquet")
    assert (result.parent / f"_{result.stem}.summary.txt").is_file()
    assert "--out .resconf/report" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["mykernels",
                                                                                    "pyproject.toml"]
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist"), "."], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stdout[-2000:] + wheel.stderr[-2000:]
    assert list((tmp_path / "dist").glob("mykernels-0.1-*.whl"))


# --- 2, 3. a misspelt backend, an invalid -k: refused, nothing written --------------------------------

@pytest.mark.parametrize("command", ["check", "calibrate"])
def test_a_misspelt_backend_is_refused_with_a_suggestion_and_nothing_written(command, tmp_path):
    line = one_error(resconf(command, "--backend", "nunpy", cwd=tmp_path))
    assert "unknown backend 'nunpy'" in line and "did you mean 'numpy'?" in line, line
    assert "numpy" in line.split("did you mean", 1)[1] and len(line) < 400
    assert nothing_written(tmp_path)


def test_a_known_backend_that_cannot_load_still_gets_its_failed_row(tmp_path):
    out = tmp_path / "r.parquet"
    proc = resconf("check", "--backend", "tests.no_such_module:Backend", "--output", str(out), "-n", "1",
                   cwd=ROOT)
    assert proc.returncode == 1
    assert [(r["property"], r["outcome"]) for r in pq.read_table(out).to_pylist()] == [("RUN", "failed")]


@pytest.mark.parametrize("command", ["check", "calibrate"])
def test_an_invalid_k_expression_is_refused_before_any_work(command, tmp_path):
    line = one_error(resconf(command, "--backend", "numpy", "-k", "a and", cwd=tmp_path))
    assert "-k" in line and "'a and'" in line, line
    assert nothing_written(tmp_path)


# --- 4. --require-device ------------------------------------------------------------------------------

def test_no_backend_on_the_device_asked_for_fails_the_run_with_the_reason(tmp_path):
    proc = check(tmp_path, "--device", "cuda", "--output", str(tmp_path / "r.parquet"))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resconf: --device cuda: no backend ran on the device: numpy: backend 'numpy' runs on cpu, " \
           "not on cuda" in proc.stderr


def test_no_require_device_lets_a_run_that_skipped_the_device_pass(tmp_path):
    proc = check(tmp_path, "--device", "cuda", "--no-require-device", "--output", str(tmp_path / "r.parquet"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "backend numpy skipped: backend 'numpy' runs on cpu, not on cuda" in proc.stdout


# --- 5, 6. python -m resconf; help in 80 columns ------------------------------------------------------

@pytest.mark.parametrize("args", [("--version",), ("check", "--help")])
def test_python_m_resconf_is_the_resconf_command(args, tmp_path):
    proc = resconf(*args, cwd=tmp_path, module="resconf")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("resconf 0.") if args == ("--version",) else "usage: resconf check" in proc.stdout


@pytest.mark.parametrize("args", [("--help",), ("check", "--help"), ("calibrate", "--help"), ("merge", "--help")])
def test_help_fits_in_80_columns(args, tmp_path):
    proc = resconf(*args, cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    wide = [line for line in proc.stdout.splitlines() if len(line) > 80]
    assert not wide, "\n".join(wide)


# --- 7. numbers that make no sense --------------------------------------------------------------------

@pytest.mark.parametrize("command, args, named", [
    ("check", ("--timeout", "0"), "--timeout"),
    ("check", ("--timeout", "-5"), "--timeout"),
    ("check", ("--timeout", "nan"), "--timeout"),
    ("check", ("-n", "-1"), "-n"),
    ("check", ("--max-examples", "0"), "--max-examples"),
    ("calibrate", ("--seeds", "0"), "--seeds"),
    ("calibrate", ("--seeds", "-3"), "--seeds"),
])
def test_a_count_or_time_that_makes_no_sense_is_refused(command, args, named, tmp_path):
    line = one_error(resconf(command, "--backend", "numpy", *args, cwd=tmp_path))
    assert named in line, line
    assert nothing_written(tmp_path)


# --- 8. the durations file ----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"a::b": "slow"}', '{"a::b": null}'])
def test_a_damaged_durations_file_is_ignored_with_a_warning_and_rewritten(damage, tmp_path, capsys):
    path = tmp_path / "durations.json"
    path.write_text(damage)
    assert shards.load_durations(path) == {}
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"resconf: ignoring damaged durations file {path}: "), warning
    assert len(warning.splitlines()) == 1
    shards.store_durations(path, {"x.py::t": 1.5})
    assert json.loads(path.read_text()) == {"x.py::t": 1.5}


def test_a_check_runs_beside_a_damaged_durations_file_and_store_durations_repairs_it(tmp_path):
    durations = tmp_path / ".resconf" / "durations.json"
    durations.parent.mkdir()
    durations.write_text("[not a mapping]")
    proc = check(tmp_path, "--store-durations", "--output", "r.parquet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ignoring damaged durations file {Path('.resconf/durations.json')}" in proc.stderr
    [key] = json.loads(durations.read_text())
    assert key.startswith("test_identity.py::test_identity_block[numpy-float64-pre-"), key


def _store_many(path: str, start: int) -> None:
    for i in range(start, start + 40, 4):
        shards.store_durations(Path(path), {f"t.py::case{i + j}": 0.1 for j in range(4)})


def test_concurrent_durations_updates_keep_every_entry(tmp_path):
    path = tmp_path / "durations.json"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_store_many, args=(str(path), 40 * k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(json.loads(path.read_text())) == 160
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- 9. unwritable output: found before the first worker; a failed final write keeps the rows -------------

@pytest.mark.parametrize("option", ["--output", "--junitxml"])
def test_an_output_that_is_a_folder_is_refused_before_any_work(option, tmp_path):
    (tmp_path / "taken").mkdir()
    line = one_error(check(tmp_path, option, "taken"))
    assert "taken" in line and "folder" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    line = one_error(check(tmp_path, "--output", "afile/r.parquet"))
    assert "afile" in line, line


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a 0o555 one, or, for root (who writes there anyway),
    sysfs."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    for folder in (locked, Path("/sys")):
        try:
            (folder / "probe").touch()
        except OSError:
            return folder
        (folder / "probe").unlink()
    pytest.skip("no read-only folder here")


def test_an_output_in_a_read_only_folder_is_refused_before_any_work(tmp_path):
    folder = read_only_folder(tmp_path)
    line = one_error(check(tmp_path, "--output", str(folder / "sub" / "r.parquet")))
    assert f"--output {folder / 'sub' / 'r.parquet'} cannot be written: " in line, line


def test_merge_refuses_an_output_that_is_a_folder_before_reading(tmp_path):
    (tmp_path / "taken").mkdir()
    line = one_error(resconf("merge", "nosuch.parquet", "-o", "taken", cwd=tmp_path))
    assert "taken" in line, line


def test_a_failed_final_write_keeps_the_rows_and_says_where(tmp_path, monkeypatch, capsys):
    from resconf.conformance import check as check_module
    from resconf.conformance.options import CheckOptions

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(check_module, "write_parquet_atomic", full_disk)
    monkeypatch.chdir(tmp_path)
    status = check_module.run_check(CheckOptions(backends=("numpy",), pytest_args=("-k", FAST),
                                                 output=tmp_path / "r.parquet"))
    err = capsys.readouterr().err
    assert status == 1
    [line] = [line for line in err.splitlines() if "No space left on device" in line]
    kept = Path(line.rsplit(" ", 1)[-1])
    assert line.startswith(f"resconf: cannot write {tmp_path / 'r.parquet'}: No space left on device; ")
    rows = [json.loads(text) for text in kept.read_text().splitlines()]
    assert [(r["backend"], r["property"], r["outcome"]) for r in rows] == [("numpy", "ID-1", "passed")]
    kept.unlink()
    assert "Traceback" not in err


# --- 10. never over a file resconf did not write ------------------------------------------------------

def test_output_over_a_file_that_is_not_resconf_results_is_refused(tmp_path):
    (tmp_path / "data.parquet").write_bytes(b"the user's own file")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    for name in ("data.parquet", "other.parquet"):
        line = one_error(check(tmp_path, "--output", name))
        assert name in line and "not a resconf results file" in line, line
    assert (tmp_path / "data.parquet").read_bytes() == b"the user's own file"


def test_output_whose_summary_name_holds_a_users_file_is_refused(tmp_path):
    (tmp_path / "_x.summary.txt").write_text("my notes\n")
    line = one_error(check(tmp_path, "--output", "x.parquet"))
    assert "_x.summary.txt" in line and "not a resconf summary" in line, line
    assert (tmp_path / "_x.summary.txt").read_text() == "my notes\n"
    assert not (tmp_path / "x.parquet").exists()


def test_a_second_run_replaces_its_own_results_and_summary(tmp_path):
    for _ in range(2):
        proc = check(tmp_path, "--output", "x.parquet")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(pq.read_table(tmp_path / "x.parquet")) == 1
    assert (tmp_path / "_x.summary.txt").read_text().startswith("resconf check")


def test_the_gpu_run_still_judges_a_backend_that_skipped_the_device_itself(tmp_path):
    """tools/gpu_report.py check asks for --device explicitly and records a backend that skipped it as a
    skipped step (77), failing only with --strict: it passes --no-require-device."""
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_report.py"), "check", "--backend", "numpy", "--device", "cuda",
           "--output", str(tmp_path / "r.parquet"), "--", "-n", "1", "-k", FAST]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 77, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "backend numpy ran nothing on cuda" in proc.stdout

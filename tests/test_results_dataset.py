"""The results folder read as users read it: pandas, pyarrow datasets and DuckDB over every run at once,
with the text summaries beside the runs left alone; provenance in every row; version 1 files upgraded;
the summary in 80 columns with whole counterexamples."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resconf.conformance import provenance, summary
from resconf.conformance.results import SCHEMA, ResultRow, read_results, to_table

ROOT = Path(__file__).resolve().parents[1]
FAST = "test_identity_block and float64 and pre and not preset"  # one case
JOB = "https://gitlab.example.org/o/r/-/jobs/7"
CI_VARIABLES = ("GITHUB_ACTIONS", *provenance.CI_URL_VARIABLES)


def check(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in CI_VARIABLES}, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", "numpy", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's git project with two runs in its default results folder."""
    folder = tmp_path_factory.mktemp("project")
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    (folder / "model.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "model.py"], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-qm", "first"], cwd=folder, check=True)
    check(folder, "-k", FAST, env={"CI_JOB_URL": JOB})  # as in a GitLab job
    check(folder, "--profile", "smoke", "-k", FAST)
    return folder


def test_the_folder_reads_as_one_dataset(project):
    pandas = pytest.importorskip("pandas")
    duckdb = pytest.importorskip("duckdb")
    results = project / ".resconf" / "results"
    assert list(results.rglob("_run-*.summary.txt")), "each run writes its summary beside it"
    frame = pandas.read_parquet(results)
    assert len(frame) == 2 and frame["run_id"].nunique() == 2
    assert len(pq.read_table(results)) == 2
    glob = str(results / "**" / "*.parquet")
    [(n, profiles)] = duckdb.sql(f"SELECT count(*), string_agg(DISTINCT profile, ',' ORDER BY profile) "
                                 f"FROM read_parquet('{glob}')").fetchall()
    assert (n, profiles) == (2, "ci,smoke")


def test_every_row_says_where_it_came_from(project):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    resconf_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()
    table = pq.read_table(project / ".resconf" / "results")
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    for row in table.to_pylist():
        assert row["code_commit"] == commit  # the user's project, not resconf's checkout
        assert row["suite_commit"].removesuffix("-dirty") == resconf_commit  # resconf's own, from any folder
        assert row["suite_version"] not in ("", "unknown")
        assert row["ci_job"] == (JOB if row["profile"] == "ci" else "")
        assert row["selection"] == f"-k '{FAST}'"
        assert row["cpu_model"] and row["blas"] and row["gpu"] == "" and row["shard"] == ""
        assert abs((datetime.now(timezone.utc) - row["timestamp"]).total_seconds()) < 600


def test_version_1_files_are_upgraded_on_reading(tmp_path):
    row = ResultRow(run_id="r", backend="numpy", device="cpu", dtype="float64", property="ID-1", test="t",
                    config="c", outcome="passed", measured=0.0, bound=0.0, comparison="==", worst_config="",
                    counterexample="", message="", rerun="", seed="", examples=1, duration_s=0.1,
                    timestamp="2026-11-22T10:00:00+00:00")
    v2 = to_table([row])
    old_names = [n for n in SCHEMA.names if n not in ("profile", "selection", "shard", "code_commit", "cpu_model",
                                                      "blas", "gpu", "suite_commit", "ci_job")]
    v1 = v2.select(old_names).set_column(old_names.index("timestamp"), "timestamp",
                                         pa.array([row.timestamp])).replace_schema_metadata(
        {"resconf_schema_version": "1"})
    pq.write_table(v1, tmp_path / "old.parquet")
    upgraded = read_results(tmp_path / "old.parquet")
    assert upgraded.schema.equals(SCHEMA, check_metadata=False)
    [got] = upgraded.to_pylist()
    assert got["timestamp"] == datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    assert got["profile"] == "" and got["suite_commit"] == "" and got["schema_version"] == row.schema_version


def test_version_2_files_are_upgraded_on_reading(tmp_path):
    row = fake_row("numpy", "ID-1", "passed")
    old_names = [n for n in SCHEMA.names if n not in ("suite_commit", "ci_job")]
    pq.write_table(to_table([row]).select(old_names).replace_schema_metadata({"resconf_schema_version": "2"}),
                   tmp_path / "v2.parquet")
    upgraded = read_results(tmp_path / "v2.parquet")
    assert upgraded.schema.equals(SCHEMA, check_metadata=False)
    [got] = upgraded.to_pylist()
    assert (got["suite_commit"], got["ci_job"], got["profile"]) == ("", "", row.profile)


def fake_row(backend: str, prop: str, outcome: str, counterexample: str = "") -> ResultRow:
    return ResultRow(run_id="r", backend=backend, device="cpu", dtype="float32", property=prop, test="t",
                     config="c", outcome=outcome, measured=None, bound=None, comparison="", worst_config="",
                     counterexample=counterexample, message="m", rerun="resconf check", seed="", examples=1,
                     duration_s=0.0)


def test_summary_fits_80_columns_and_keeps_whole_counterexamples():
    backends = ["numpy", "torch", "jax", "control_pairwise", "triton_fused", "mypkg.adapter:MyBackend"] + [
        f"b{i}" for i in range(6)]
    rows = [fake_row(b, p, o) for b in backends for p in ("ID-1", "GR-12", "XB-3", "RUN")
            for o in ("passed", "failed", "xfailed", "skipped")]
    text = summary.matrix(rows)
    assert max(map(len, text.splitlines())) <= summary.WIDTH, text
    for backend in backends:  # each backend is in a header, or named in the key below
        assert backend in text
    long = "Failing test case: test_x(" + ", ".join(f"arg{i}=array([{i}.5, -0.25])" for i in range(200)) + ")"
    assert long in summary.failures([fake_row("numpy", "ID-1", "failed", long)])

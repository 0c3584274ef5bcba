"""`resconf check` isolates backends: one that raises, hangs, exits or segfaults fails its own rows only.

Each run pairs the healthy `numpy` backend with broken ones from tests/broken_backends.py (they misbehave
in rezero float64 cases only) on a handful of cases, and checks three things: numpy's rows are all
present and passed; the broken case has a failed row that says what happened; and the broken backend's
cases after it still ran (a crashed or hung worker is resumed without the cases already done).
Then a loop kills `resconf check` itself at random moments: its results file must stay whole.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from resconf.conformance.results import SCHEMA, read_results

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "tests.broken_backends:"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def resconf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resconf.conformance.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env=ENV)


def rows_by_backend(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in read_results(path).to_pylist():
        out.setdefault(row["backend"], []).append(row)
    return out


def outcome_of(rows: list[dict], test_part: str) -> dict:
    [row] = [r for r in rows if test_part in r["test"]]
    return row


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """numpy beside backends that raise, call os._exit(1), and segfault; smoke: no shrinking of the
    always-failing Raises cases."""
    out = tmp_path_factory.mktemp("crash") / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--backend", BROKEN + "Raises", "--backend", BROKEN + "Exits",
                   "--backend", BROKEN + "Segfaults", "--profile", "smoke", "--output", str(out),
                   "-k", "test_identity_block and (float64 or float32) and not rezero-zero and not preset")
    return proc, rows_by_backend(out)


def test_other_backends_results_survive_a_crash(crashed):
    proc, rows = crashed
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert len(rows["numpy"]) == 4 and {r["outcome"] for r in rows["numpy"]} == {"passed"}


def test_raising_backend_fails_every_case(crashed):
    _, rows = crashed
    raised = rows["raises"]  # rows go by the backend's own name, whatever spelling selected it
    assert len(raised) == 4 and {r["outcome"] for r in raised} == {"failed"}
    assert all("stack_forward exploded" in r["message"] for r in raised)


@pytest.mark.parametrize("name, own, how", [("Exits", "exits", "exited with status 1"),
                                            ("Segfaults", "segfaults", "killed by SIGSEGV")])
def test_dead_worker_names_the_case_and_resumes(crashed, name, own, how):
    proc, rows = crashed
    got = rows[own]
    culprit = outcome_of(got, "float64-rezero-rezero")
    assert culprit["outcome"] == "failed" and culprit["property"] == "ID-1"
    assert how in culprit["message"] and "test_identity_block[" in culprit["message"]
    assert culprit["rerun"].startswith(f"resconf check --backend {BROKEN}{name} ")
    assert culprit["rerun"].endswith(f"-k 'test_identity_block[{own}-float64-rezero-rezero-block]'")
    # the cases after it ran in a resumed worker, each exactly once
    assert sorted(r["test"].split("[")[1] for r in got if r["outcome"] == "passed") == [
        f"{own}-float32-pre-zero-block]", f"{own}-float32-rezero-rezero-block]", f"{own}-float64-pre-zero-block]"]
    assert f"backend {BROKEN}{name}: the worker" in proc.stdout and "restarted" in proc.stdout
    assert "Workers:" in proc.stdout and "config=placement=rezero,init=rezero,layer=block" in proc.stdout


@pytest.fixture(scope="module")
def hung(tmp_path_factory):
    """numpy beside a backend that sleeps forever (the per-test timer ends the case) and one that sleeps
    with SIGALRM blocked (the supervisor kills the worker and resumes it)."""
    out = tmp_path_factory.mktemp("hang") / "r.parquet"
    proc = resconf("check", "--backend", "numpy", "--backend", BROKEN + "Hangs",
                   "--backend", BROKEN + "HangsUninterruptibly", "--timeout", "2", "--output", str(out),
                   "-k", "test_identity_block and (float64 or float32) and not rezero-zero and not preset")
    return proc, rows_by_backend(out)


def test_hang_ends_as_timed_out_and_the_worker_continues(hung):
    proc, rows = hung
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert len(rows["numpy"]) == 4 and {r["outcome"] for r in rows["numpy"]} == {"passed"}
    got = rows["hangs"]
    culprit = outcome_of(got, "float64-rezero-rezero")
    # The worker's timer ended it (the supervisor's own rows say "no result ... after it started" and
    # record no duration); when the timer is armed is test_the_case_timer_is_armed_at_the_timeout's.
    assert culprit["outcome"] == "failed" and "timed out after 2 s" in culprit["message"]
    assert culprit["duration_s"] > 0
    assert sum(r["outcome"] == "passed" for r in got) == 3, "the same worker went on after the timeout"
    assert f"backend {BROKEN}Hangs: worker restarted" not in proc.stdout


def test_the_case_timer_is_armed_at_the_timeout():
    """The per-test timer goes off --timeout seconds after the case starts, by the clock, not by a guess at
    how long a case took (a timed assertion on a loaded machine proves nothing either way)."""
    from types import SimpleNamespace

    from resconf.conformance.plugin_active import ACTIVE
    from resconf.conformance.plugin_timeout import pytest_timeout_set_timer

    item = SimpleNamespace(config=SimpleNamespace(stash={ACTIVE: True}))
    assert pytest_timeout_set_timer(item, SimpleNamespace(method="signal", timeout=7.0)) is True
    try:
        delay, interval = signal.getitimer(signal.ITIMER_REAL)
        assert 6.0 < delay <= 7.0 and interval == 0.0
    finally:
        item.cancel_timeout()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "cancel disarms it"


def test_hang_no_signal_can_end_is_killed_and_resumed(hung):
    proc, rows = hung
    got = rows["hangs-uninterruptibly"]
    culprit = outcome_of(got, "float64-rezero-rezero")
    assert culprit["outcome"] == "failed"
    assert "timed out: no result 4 s after it started" in culprit["message"]
    assert sum(r["outcome"] == "passed" for r in got) == 3, "the resumed worker ran the cases after it"


def test_killed_check_leaves_the_old_results_or_the_new_ones(tmp_path):
    """SIGKILL `resconf check` at random moments: the results path holds a complete file every time (the
    previous run's or the new one's), no reader globbing *.parquet sees a partial one, and the worker
    dies with its parent instead of running on."""
    out = tmp_path / "date=2026-01-01" / "r.parquet"
    cmd = [sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", "numpy", "--output", str(out),
           "-k", "test_identity_block and float64 and not preset"]
    env = {**ENV, "TMPDIR": str(tmp_path)}  # a killed run leaves its work folder: keep it in tmp_path
    started = time.monotonic()
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    full_run_s = time.monotonic() - started
    runs_seen = {read_results(out).column("run_id")[0].as_py()}
    rng = random.Random(20261101)
    deadline = time.monotonic() + 8
    tries = 0
    while tries < 3 or (time.monotonic() < deadline and tries < 8):
        tries += 1
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        # mostly late in the run, where the results are written; now and then early, in the worker
        time.sleep(full_run_s * (rng.uniform(0.75, 1.1) if tries % 3 else rng.uniform(0.05, 0.75)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _group_gone(proc.pid), "the worker outlived resconf check"
        table = read_results(out)  # complete, readable, right schema version
        assert table.schema.names == SCHEMA.names and table.num_rows == 3
        assert len(set(table.column("run_id").to_pylist())) == 1
        runs_seen.add(table.column("run_id")[0].as_py())
        visible = sorted(tmp_path.rglob("*.parquet"))  # what reports/load.py and DuckDB's glob read
        assert visible == [out] and ds.dataset(visible, format="parquet").count_rows() == 3
    print(f"{tries} kills, {len(runs_seen)} distinct complete results seen")


def _group_gone(pgid: int, wait_s: float = 3.0) -> bool:
    """True once no process of the group is left; kills stragglers so the test leaves none behind."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    return False

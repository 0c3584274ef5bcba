"""A third-party backend, run the way its author would: from a folder outside the repo, by module path, by
entry point, and with an expected-failure file. The backend is examples/user_torch_block (public API only)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch", reason="the example backend wraps a PyTorch module, and torch is not installed")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_torch_block"
ADAPTER = "user_torch_block.adapter:UserBlockBackend"
FAST = "test_identity_block or test_gradient_decomposition"  # one forward and one gradient property

# The example's block with its skip detached from autograd: forward right, input VJP missing the identity path.
BROKEN_MODULE = '''
from user_torch_block.adapter import UserBlockBackend
from user_torch_block.model import MyPreLNBlock


class DetachedSkipBlock(MyPreLNBlock):
    def forward(self, x):
        return x.detach() + self.proj(self.act(self.fc(self.ln(x))))


class DetachedSkipBackend(UserBlockBackend):
    name = "detached_skip"
    block_class = DetachedSkipBlock
'''
DETACHED_REASON = "DetachedSkipBlock detaches its skip from autograd, so the input VJP lacks the identity path"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder outside the repo holding only the example package and the broken variant."""
    site = tmp_path_factory.mktemp("site")
    assert ROOT not in site.parents
    shutil.copytree(EXAMPLE / "user_torch_block", site / "user_torch_block")
    (site / "broken_block.py").write_text(BROKEN_MODULE)
    return site


def resconf_check(*args: str, path: list[Path]) -> subprocess.CompletedProcess:
    """`resconf check ARGS` run from path[0] with PYTHONPATH = path (resconf itself comes from the venv)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", *args], cwd=path[0], env=env,
                          capture_output=True, text=True, timeout=300)


def test_module_path_runs_claimed_cases_and_skips_the_rest(site, tmp_path):
    out = tmp_path / "r.parquet"
    proc = resconf_check("--backend", ADAPTER, "--output", str(out), "-k", FAST, path=[site])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    assert {r["backend"] for r in rows} == {"user_torch_block"}  # its own name, whatever spelling selected it
    claimed = [r for r in rows if "placement=pre" in r["config"] and "layer=preset" not in r["config"]
               and r["dtype"] in ("float32", "float64")]  # it claims no layer-model features: blocks only
    assert {(r["property"], r["dtype"], r["outcome"]) for r in claimed} == {
        (p, d, "passed") for p in ("ID-1", "GR-1") for d in ("float32", "float64")}
    unclaimed = [r for r in rows if r not in claimed]
    assert {r["config"].split(",")[0] for r in unclaimed} == {"placement=pre", "placement=rezero", "placement=post"}
    assert {r["dtype"] for r in unclaimed} == {"float64", "float32", "bfloat16", "float16"}
    for row in unclaimed:
        assert row["outcome"] == "skipped" and "does not claim" in row["message"], row


def test_entry_point_name_finds_the_backend(site, tmp_path):
    """What `pip install` of the example leaves behind, written by hand: a dist-info folder whose
    entry_points.txt carries the `resconf.backends` entry of the example's pyproject.toml."""
    entry = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]["resconf.backends"]
    assert entry == {"user_torch_block": ADAPTER}
    dist = tmp_path / "meta" / "user_torch_block-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-torch-block\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[resconf.backends]\nuser_torch_block = " + ADAPTER + "\n")
    out = tmp_path / "r.parquet"
    proc = resconf_check("--backend", "user_torch_block", "--output", str(out), "-k", "test_identity_block",
                         path=[site, dist.parent])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    assert {r["backend"] for r in rows} == {"user_torch_block"}
    assert {(r["dtype"], r["config"]) for r in rows if r["outcome"] == "passed"} == {
        ("float32", "placement=pre,init=zero,layer=block"), ("float64", "placement=pre,init=zero,layer=block")}


def test_expected_failure_file_turns_a_known_failure_into_xfailed(site, tmp_path):
    xfails = tmp_path / "xfails.toml"
    xfails.write_text(f'[[xfail]]\nproperty = "GR-1"\ntest = "test_gradient_decomposition"\n'
                      f'reason = "{DETACHED_REASON}"\n')
    out = tmp_path / "r.parquet"
    proc = resconf_check("--backend", "broken_block:DetachedSkipBackend", "--xfails", str(xfails),
                         "--output", str(out), "-k", "test_gradient_decomposition", path=[site])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    xfailed = [r for r in rows if r["outcome"] == "xfailed"]
    assert {(r["property"], r["dtype"]) for r in xfailed} == {("GR-1", "float32"), ("GR-1", "float64")}
    assert all(r["message"] == f"expected failure: {DETACHED_REASON}" for r in xfailed)
    assert {r["outcome"] for r in rows} == {"xfailed", "skipped"}


def test_expected_failure_entry_matching_nothing_fails_the_run(site, tmp_path):
    """A stale entry (here: a test renamed since) fails the run by name. The check needs the whole
    suite collected (no -k); it stops at collection, so nothing runs."""
    xfails = tmp_path / "stale.toml"
    xfails.write_text('[[xfail]]\nproperty = "GR-1"\ntest = "test_gradient_decomposition_old"\n'
                      'reason = "renamed since"\n')
    proc = resconf_check("--backend", ADAPTER, "--xfails", str(xfails), "--output", str(tmp_path / "r.parquet"),
                         path=[site])
    assert proc.returncode == 1
    assert "property=GR-1, test=test_gradient_decomposition_old" in proc.stdout + proc.stderr

"""The device is a property of the asv run (RESCONF_BENCH_DEVICE; default cuda where an NVIDIA driver is
loaded, else cpu), not a grid axis: a CPU runner's grid has no cell that is n/a for want of a GPU. And an
`existing` asv environment is named by its Python version, not by the path of the venv (asv.conf.json's
plugin), so results from two folders or machines line up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common as cm

REPO = Path(__file__).resolve().parents[1]


def suite_params(value: str | None) -> subprocess.CompletedProcess:
    """Every benchmark class's device values, imported in a fresh interpreter (as asv does)."""
    code = ("import json\n"
            "from benchmarks import bench_fused, bench_roofline, bench_stack\n"
            "classes = [bench_fused.AddRMSNormForward, bench_fused.AddLayerNormForwardBackward,\n"
            "           bench_stack.PreLNMLPStack, bench_roofline.Copy, bench_roofline.CopyAllCores]\n"
            "print(json.dumps({c.__name__: c.params[c.param_names.index('device')] for c in classes}))")
    env = {k: v for k, v in os.environ.items() if k != cm.DEVICE_ENV}
    if value is not None:
        env[cm.DEVICE_ENV] = value
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("value", ["cpu", "cuda"])
def test_the_variable_sets_the_one_device_of_every_grid(value):
    done = suite_params(value)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(map(tuple, json.loads(done.stdout).values())) == {(value,)}


def test_the_default_is_cuda_where_a_driver_is_loaded_else_cpu():
    done = suite_params(None)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "cuda" if cm.cuda_present() else "cpu"
    assert set(map(tuple, json.loads(done.stdout).values())) == {(expected,)}


def test_a_device_that_is_not_cpu_or_cuda_fails_the_import_naming_it():
    done = suite_params("gpu")
    assert done.returncode != 0
    assert f"{cm.DEVICE_ENV}='gpu'" in done.stderr and "'cpu' or 'cuda'" in done.stderr


def test_an_existing_environment_is_named_by_its_python_not_its_path():
    asv = pytest.importorskip("asv")
    from asv import environment
    from asv.config import Config

    conf = json.loads("\n".join(line for line in (REPO / "asv.conf.json").read_text().splitlines()
                                if not line.lstrip().startswith("//")))
    assert conf.get("plugins") == [".benchmarks.asv_environment"], "asv.conf.json does not load the plugin"
    before = environment.ExistingEnvironment.name
    try:
        from benchmarks import asv_environment  # noqa: F401  (what asv imports for the "plugins" entry)

        config = Config()
        config.project, config.env_dir = "resconf", str(REPO / ".asv" / "env")
        env = environment.ExistingEnvironment(config, sys.executable, {}, {})
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert env.name == f"existing-py{version}", env.name
        assert os.sep not in env.name and str(REPO.name) not in env.name
    finally:
        environment.ExistingEnvironment.name = before
    assert asv  # the plugin is asv's own mechanism: nothing of it is imported without asv

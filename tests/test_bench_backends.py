"""Any registered backend joins the asv grids through RESCONF_BENCH_BACKENDS (benchmarks/common.py), with no
edit of the suite: read when asv imports the benchmarks, checked without importing what it names, appended
after the built-ins (whose parameter lists stay as they were), and timed where the backend's claims say.

The backends below are the module-path backends the tests name: `tests.test_bench_backends:FusedOnly`
(NumPy fused add+norm, no blocks) and `tests.test_bench_backends:BlocksOnly` (the oracle's blocks).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common as cm
from benchmarks.numpy_baseline import NumpyBaseline
from resconf.backends.base import Capabilities
from resconf.backends.oracle.numpy_ref import NumpyReference

REPO = Path(__file__).resolve().parents[1]
FUSED_ONLY, BLOCKS_ONLY = "tests.test_bench_backends:FusedOnly", "tests.test_bench_backends:BlocksOnly"
FRAMEWORKS = ("torch", "jax", "numba", "triton", "liger_kernel")


class FusedOnly(NumpyBaseline):
    """A third party's fused add+norm kernel (here: the NumPy composition), named by module path."""
    name = "fused_only"


class BlocksOnly(NumpyReference):
    """A third party's residual blocks (here: the float64 oracle's), with the stack benchmark hooks."""
    name = "blocks_only"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(dtypes=frozenset({"float32", "float64"}))

    def to_native(self, a: np.ndarray, dtype: str) -> np.ndarray:
        return a

    def bench_stack(self, cfg, params, dtype):
        return lambda x, g: self.stack_vjp(cfg, params, x, g, dtype)


def _suite_grids(value: str | None) -> dict:
    """Import the asv suite in a fresh interpreter (as asv does) with RESCONF_BENCH_BACKENDS=value."""
    code = ("import json, sys\n"
            "from benchmarks import bench_fused, bench_stack\n"
            "print(json.dumps({'fused': bench_fused.AddRMSNormForward.params[0],\n"
            "                  'stack': bench_stack.PreLNMLPStack.params[0],\n"
            f"                  'frameworks': [f for f in {FRAMEWORKS!r} if f in sys.modules]}}))")
    env = {k: v for k, v in __import__("os").environ.items() if k != cm.EXTRA_ENV}
    if value is not None:
        env[cm.EXTRA_ENV] = value
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_without_the_variable_the_grids_are_the_built_ins():
    grids = _suite_grids(None)
    assert grids["fused"] == list(cm.BUILTIN_FUSED) and grids["stack"] == list(cm.BUILTIN_STACK)
    assert "liger" in grids["fused"], "Liger's kernels are timed next to ours and torch.compile"


def test_named_backends_join_both_grids_after_the_built_ins():
    grids = _suite_grids(f" {FUSED_ONLY}, {BLOCKS_ONLY},liger,{FUSED_ONLY}")
    # the built-ins keep their positions, so their asv parameter combinations (and history) are unchanged
    assert grids["fused"] == list(cm.BUILTIN_FUSED) + [FUSED_ONLY, BLOCKS_ONLY]
    assert grids["stack"] == list(cm.BUILTIN_STACK) + [FUSED_ONLY, BLOCKS_ONLY, "liger"]
    assert grids["frameworks"] == [], "reading the variable imported a framework"


def test_a_name_that_is_no_backend_fails_the_import_naming_it():
    with pytest.raises(ValueError, match=r"'not_a_backend' is neither a built-in backend.*package.module:attr"):
        cm.extra_backends("torch,not_a_backend")
    with pytest.raises(ValueError, match=r"'pkg.mod:'"):
        cm.extra_backends("pkg.mod:")
    assert cm.extra_backends("") == () and cm.extra_backends(" , ") == ()


def test_a_fused_backend_runs_in_the_fused_grid_and_skips_the_stack():
    case = cm.fused_case(FUSED_ONLY, "cpu", "layernorm", "float32", (64, 32), True)
    out, new_residual, *grads = case.fn(*case.args)
    assert out.shape == new_residual.shape == (64, 32) and len(grads) == 3  # d_sum, dweight, dbias
    with pytest.raises(NotImplementedError, match="fused_only.*does not claim Pre-LN MLP blocks"):
        cm.stack_case(FUSED_ONLY, "cpu", "float32", (8, 16), 2)


def test_a_blocks_backend_runs_in_the_stack_grid_and_skips_the_fused():
    case = cm.stack_case(BLOCKS_ONLY, "cpu", "float32", (8, 16), 2)
    assert case.fn(*case.args).dx.shape == (1, 8, 16)
    with pytest.raises(NotImplementedError, match="blocks_only.*does not claim fused add\\+rmsnorm"):
        cm.fused_case(BLOCKS_ONLY, "cpu", "rmsnorm", "float32", (64, 32), False)


def test_liger_on_the_cpu_is_skipped_not_timed():
    with pytest.raises(NotImplementedError, match="liger on the CPU is Triton's interpreter"):
        cm.fused_case("liger", "cpu", "rmsnorm", "float32", (64, 32), False)

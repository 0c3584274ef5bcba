"""The tensor-parallel spec (backends/tensor_parallel.py) and the launcher (backends/parallel/launch.py).

The spec: sharding then gathering gives the record back, and the split layer run in float64 NumPy is the
oracle's layer. The launcher: a rank that raises fails the call naming it; and a run killed while a rank
hangs (SIGKILL, or Ctrl-C's KeyboardInterrupt) leaves no rank process behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends import tensor_parallel as tp
from resconf.backends.oracle.tensor_parallel import reference_forward
from resconf.backends.params import draw_params
from resconf.backends.presets import gpt2, llama
from tests.test_tp_mutants import tagged_processes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"gpt2": gpt2(d_model=16, n_heads=4, depth=2),
           "llama": llama(d_model=32, n_heads=8, n_kv_heads=4, depth=2, layer_scale=0.5, qk_norm=True)}


@pytest.mark.parametrize("ranks", [1, 2, 4])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_shard_then_gather_gives_the_record_back(name, ranks):
    cfg = CONFIGS[name]
    for p in draw_params(cfg, 0, perturb=True):
        shards = [tp.shard_params(cfg, p, r, ranks) for r in range(ranks)]
        assert shards[0]["attention.wq"].shape == (cfg.d_model, cfg.d_model // ranks)
        assert shards[-1]["mlp.w_down"].shape == (cfg.d_hidden // ranks, cfg.d_model)
        back = tp.gather_grads(shards)
        assert list(back.tensors) == list(p.tensors)
        assert all(np.array_equal(back[n], t) for n, t in p.items())


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_split_layer_is_the_oracles_layer(name, ranks):
    """Sums over ranks only reorder the oracle's sums: float64 agreement to a few ulps."""
    cfg = CONFIGS[name]
    params = draw_params(cfg, 1, perturb=True)
    x = np.random.default_rng(2).normal(size=(2, 5, cfg.d_model))
    want = ref.stack_forward(cfg, params, x).states[-1]
    got = reference_forward(cfg, params, x, ranks)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-14


def test_why_not_names_what_does_not_divide():
    assert "n_kv_heads=2 not divisible by P=4" in tp.why_not(llama(d_model=16), 4)
    assert tp.why_not(llama(d_model=16), 2) is None
    assert "pre-norm" in tp.why_not(gpt2(placement="post"), 2)
    assert "not ('linear',)" in tp.why_not(gpt2(sublayers=("linear",)), 2)
    with pytest.raises(ValueError, match="cannot run on 4 tensor-parallel ranks"):
        tp.shard_params(llama(d_model=16), draw_params(llama(d_model=16), 0)[0], 0, 4)


def test_a_call_outside_the_claims_is_refused_before_any_launch():
    pytest.importorskip("torch")
    from resconf.backends.torch.backend import TorchBackend

    cfg = CONFIGS["gpt2"]
    with pytest.raises(ValueError, match=r"claims tensor-parallel rank counts \[2, 4\], not 3"):
        TorchBackend().tp_stack_forward(cfg, draw_params(cfg, 0), np.zeros((1, 2, 16)), "float64", 3)


# --- the launcher, on real gloo ranks ---

DRIVER = """
import signal, sys
import numpy as np
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the test runner ignores SIGINT
from resconf.backends.params import draw_params
from resconf.backends.presets import gpt2
from tests.tp_mutants import {backend}
b = {backend}()
b.tp_timeout_s = 600.0
cfg = gpt2(d_model=16, n_heads=4)
b.tp_stack_forward(cfg, draw_params(cfg, 0), np.ones((1, 2, 16)), "float64", 2)
"""


def _driver(tmp_path: Path, backend: str, tag: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RESCONF_TP_TAG": tag,
           "RESCONF_TEST_HANG_MARK": str(tmp_path / "hanging"),
           "TMPDIR": str(tmp_path)}  # a SIGKILLed driver cannot remove its job folder
    return subprocess.Popen([sys.executable, "-c", DRIVER.format(backend=backend)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(what, seconds: float, step: float = 0.1):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(step)
    return False


def test_a_raising_rank_fails_the_call_naming_it(tmp_path):
    pytest.importorskip("torch")
    tag = f"tpraise{uuid.uuid4().hex[:8]}"
    proc = _driver(tmp_path, "RankRaises", tag)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "RankFailed: torch/gloo tensor-parallel, P=2: rank 1 raised in job 1" in err, err[-3000:]
    assert "ValueError: rank 1 cannot shard this" in err
    assert not tagged_processes(tag)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_run_leaves_no_rank_behind(tmp_path, how):
    """While rank 1 hangs and rank 0 waits in the all-reduce, the run is killed: by SIGKILL (the ranks die
    with their parent, PR_SET_PDEATHSIG) or by SIGINT (the KeyboardInterrupt kills their process group)."""
    pytest.importorskip("torch")
    tag = f"tpkill{uuid.uuid4().hex[:8]}"
    proc = _driver(tmp_path, "RankHangs", tag)
    try:
        assert _wait_for(lambda: (tmp_path / "hanging").exists() or proc.poll() is not None, 240), "rank 1 never hung"
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)  # rank 0 is in (or about to enter) the all-reduce
        assert len(tagged_processes(tag)) == 2
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=60)
        if how == "SIGINT":
            assert "KeyboardInterrupt" in err, err[-3000:]
        assert _wait_for(lambda: not tagged_processes(tag), 10), tagged_processes(tag)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

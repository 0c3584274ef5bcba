"""The reference cache (conformance/reference_cache.py): keys that tell every argument apart, results that
come back bitwise equal, damaged entries computed again, and a check whose verdicts do not depend on it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from resconf.backends.config import BlockConfig
from resconf.backends.oracle.numpy_ref import NumpyReference
from resconf.backends.params import draw_params
from resconf.conformance import reference_cache as rc

ROOT = Path(__file__).resolve().parents[1]


def key(*args, **kwargs) -> str:
    return rc.call_key("oracle", "stack_forward", args, kwargs)


def test_keys_tell_apart_what_changes_the_result():
    x = np.arange(8, dtype=np.float64).reshape(1, 2, 4)
    cfg = BlockConfig(placement="pre", d_model=4)
    base = key(cfg, x, "float32")
    different = [key(cfg, x.astype(np.float32), "float32"),  # same values, another dtype
                 key(cfg, x.reshape(1, 4, 2), "float32"),  # same bytes, another shape
                 key(cfg, x + 2.0**-40, "float32"),  # one rounding apart
                 key(BlockConfig(placement="post", d_model=4), x, "float32"),
                 key(cfg, x, "bfloat16"),
                 key(cfg, x, dtype="float32"),  # keyword, not positional
                 rc.call_key("oracle", "stack_vjp", (cfg, x, "float32"), {})]
    assert len({base, *different}) == len(different) + 1
    assert key(cfg, x.copy(), "float32") == base and key(cfg, np.asfortranarray(x), "float32") == base


def test_an_argument_without_canonical_bytes_is_computed_not_cached(tmp_path):
    store = rc.Store(tmp_path)
    calls = []
    for _ in range(2):
        rc.cached_call(store, "oracle", "m", lambda: calls.append(1), (object(),), {})
    assert len(calls) == 2 and store.hits == 0


def test_the_oracle_through_the_cache_is_bitwise_the_oracle(tmp_path):
    cfg = BlockConfig(placement="pre", norm="rmsnorm", branch="mlp", depth=2, d_model=8)
    params, x = draw_params(cfg, 1), np.random.default_rng(0).normal(size=(2, 3, 8))
    oracle = NumpyReference()
    want = oracle.stack_forward(cfg, params, x, "float32")
    store = rc.Store(tmp_path)
    cached = rc.Cached(oracle, "oracle", store)
    first, second = (cached.stack_forward(cfg, params, x, "float32") for _ in range(2))
    assert (store.misses, store.hits) == (1, 1)
    for got in (first, second):
        for a, b in zip(got.states, want.states):
            assert a.tobytes() == b.tobytes()


def test_a_damaged_entry_is_computed_again(tmp_path):
    store = rc.Store(tmp_path)
    assert rc.cached_call(store, "r", "m", lambda: [1.5], (1,), {}) == [1.5]
    [entry] = store.folder.rglob("*.pkl")
    entry.write_bytes(b"not a pickle")  # a leftover of a full disk
    assert rc.cached_call(store, "r", "m", lambda: [2.5], (1,), {}) == [2.5]
    assert not list(store.folder.rglob("*.tmp")), "entries are renamed into place whole"


def test_another_suite_version_starts_afresh_and_old_ones_are_pruned(tmp_path):
    for old in ("a", "b", "c", "d"):
        (tmp_path / old).mkdir()
    store = rc.Store(tmp_path)
    assert store.folder.name == rc.suite_digest() and len(store.folder.name) == 32
    store.get_or_compute("k" * 40, lambda: 1)  # its folder made
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == rc.KEEP_VERSIONS


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """The same torch subset three ways: cache cold, cache warm (another folder's cache is not read), no cache."""
    folder = tmp_path_factory.mktemp("cached")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = {}
    for name, args in (("cold", []), ("warm", []), ("off", ["--no-cache"])):
        out = folder / f"{name}.parquet"
        proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", "torch", "-n", "1",
                               "-k", "test_forward_matches_oracle and block and (float16 or float32)", "--output",
                               str(out), *args], cwd=folder, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        rows[name] = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["test"])
    rows["entries"] = list((folder / ".resconf" / "cache" / "references").rglob("*.pkl"))
    return rows


def test_verdicts_and_measurements_do_not_depend_on_the_cache(runs):
    assert runs["entries"], "the ci profile stored no reference"
    fields = ("test", "outcome", "measured", "bound", "worst_config")
    cold, warm, off = ([tuple(r[f] for f in fields) for r in runs[k]] for k in ("cold", "warm", "off"))
    assert cold == warm == off and len(cold) >= 10

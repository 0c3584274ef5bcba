"""One name per concept in the adapter API: a stack's per-update array is `writes` (the catalogue's word,
docs/spec.md). Its old name `branches` keeps working for adapters written against it, and warns."""
from __future__ import annotations

import numpy as np
import pytest

from resconf.backends import BlockConfig, draw_params, load_backend
from resconf.backends.base import StackTrace

STATES, WRITES = np.zeros((2, 1, 3, 4)), np.ones((1, 1, 3, 4))


def test_writes_is_the_field_and_the_oracle_fills_it():
    cfg = BlockConfig(placement="pre", norm="layernorm", sublayers=("mlp",), d_model=8, depth=2)
    x = np.random.default_rng(0).standard_normal((1, 3, 8))
    trace = load_backend("numpy").stack_forward(cfg, draw_params(cfg, 0), x, "float64")
    assert trace.writes.shape == (2, 1, 3, 8)
    np.testing.assert_allclose(trace.states[-1], x + trace.writes.sum(axis=0), rtol=1e-12, atol=1e-14)


def test_old_keyword_still_builds_the_trace_and_warns():
    with pytest.warns(DeprecationWarning, match=r"StackTrace\(branches=\.\.\.\) is deprecated: use StackTrace\(writes"):
        trace = StackTrace(states=STATES, branches=WRITES)
    assert trace.writes is WRITES and trace == StackTrace(STATES, WRITES)


def test_old_attribute_still_reads_the_writes_and_warns():
    trace = StackTrace(states=STATES, writes=WRITES)
    with pytest.warns(DeprecationWarning, match=r"StackTrace\.branches is deprecated: use StackTrace\.writes"):
        assert trace.branches is WRITES


def test_new_name_does_not_warn(recwarn):
    StackTrace(STATES, writes=WRITES).writes
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_both_names_at_once_is_refused():
    with pytest.raises(TypeError, match="give writes only"):
        StackTrace(states=STATES, writes=WRITES, branches=WRITES)

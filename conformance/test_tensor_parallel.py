"""TP: tensor-parallel residual layers. A layer split over P ranks (column-parallel input projections,
row-parallel output projections, one all-reduce, then the output bias and the residual once; the split is
backends/tensor_parallel.py) is the single-device layer.

The layers are the GPT-2 and Llama presets (pre-norm), with head counts every P divides: GPT-2 with 4 heads,
Llama with 8 query and 4 kv heads (grouped queries, so a rank's queries must find their kv heads on that
rank). float64 and float32: a low-precision all-reduce sums rounded partials, another numerical contract.
Each call starts nothing: a backend keeps its ranks for the session (backends/parallel/launch.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends import tensor_parallel as tp
from resconf.backends.dtypes import DTYPES, NARROW_DTYPES, round_to
from resconf.backends.presets import preset
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance import profiles
from resconf.conformance.requirements import require_config

RANKS = (2, 4)
TP_DTYPES = tuple(d for d in DTYPES if d not in NARROW_DTYPES)  # float64, float32
TP_SHAPES = ((2, 4, 16), (3, 8, 32))  # T divisible by P too: a sequence-parallel layer splits the tokens
HEADS = {"gpt2": {"n_heads": 4}, "llama": {"n_heads": 8, "n_kv_heads": 4}}


def require_tensor_parallel(backend, ranks: int) -> None:
    claimed = backend.capabilities.tensor_parallel
    if ranks not in claimed:
        pytest.skip(f"{backend.name} does not claim a tensor-parallel layer on {ranks} ranks (it claims "
                    f"{sorted(claimed) or 'none'}; Capabilities.tensor_parallel)")


def structures(backend, case: int, ranks: int, init: str, depths=(1, 2)):
    """(shape, config): the presets at `pre`, every P in RANKS dividing n_heads, n_kv_heads and d_ff. Fixed
    per case in the `ci` and `smoke` profiles (a JAX compile per structure), drawn per example otherwise."""
    # the presets alternate, so the two dtypes of a case (consecutive structures) meet both
    combos = [(shape, preset(name, placement="pre", init=init, depth=depth, d_model=shape[-1], **heads))
              for shape in TP_SHAPES for depth in depths for name, heads in HEADS.items()]
    combos = [(shape, cfg) for shape, cfg in combos if tp.why_not(cfg, ranks) is None]
    if hh.STRUCTURE_PER_EXAMPLE:
        return st.sampled_from(combos)
    return st.just(combos[hh.rotation(case, len(combos))])


def _draw_structure(data, backend, case, ranks, init):
    require_tensor_parallel(backend, ranks)
    shape, cfg = data.draw(structures(backend, case, ranks, init), label="structure")
    require_config(backend, cfg)
    return shape, cfg


@pytest.mark.property("TP-1")
@pytest.mark.dtypes(*TP_DTYPES)
@pytest.mark.parametrize("ranks", RANKS)
@profiles.heavy(0.5)
@given(data=st.data())
def test_tensor_parallel_matches_oracle(subject, oracle, baseline, case, dtype, ranks, prop, data):
    """Every state, every write, d x_0 and every parameter's gradient (the ranks' shards put back) within the
    single-device budgets of XB-1 and XB-2: splitting a sum over ranks only reorders it."""
    shape, cfg = _draw_structure(data, subject, case, ranks, "standard")
    seed, scale = data.draw(hh.seeds, label="seed"), data.draw(hh.scales, label="scale")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, scale=scale, ranks=ranks)
    x, g = hh.normal_input(seed, shape, scale, dtype), hh.normal_input(seed + 1, shape, 1.0, dtype)
    params = hh.params_for(subject, cfg, seed, dtype, perturb=True)
    got, want = subject.tp_stack_forward(cfg, params, x, dtype, ranks), oracle.stack_forward(cfg, params, x, dtype)
    base = baseline.stack_forward(cfg, params, x, dtype)
    prop.within_budget(f"the states on {ranks} ranks", got.states, want.states, base.pick(lambda t: t.states),
                       "forward", dtype, cfg.n_updates)
    prop.within_budget(f"the writes on {ranks} ranks", got.writes, want.writes, base.pick(lambda t: t.writes),
                       "forward", dtype, cfg.n_updates)
    got, want = subject.tp_stack_vjp(cfg, params, x, g, dtype, ranks), oracle.stack_vjp(cfg, params, x, g, dtype)
    base = baseline.stack_vjp(cfg, params, x, g, dtype)
    prop.within_budget(f"d x_0 on {ranks} ranks", got.dx, want.dx, base.pick(lambda gr: gr.dx), "gradient", dtype,
                       cfg.n_updates)
    for index, (gp, wp) in enumerate(zip(got.dparams, want.dparams, strict=True)):
        for (name, a), (_, b) in zip(gp.items(), wp.items(), strict=True):
            if hh.resolvable(b, dtype):
                prop.within_budget(f"d {name} in layer {index} on {ranks} ranks", a, b,
                                   base.pick(lambda gr, i=index, n=name: gr.dparams[i][n]), "gradient", dtype,
                                   cfg.n_updates)


def _random_output_biases(cfg, params, seed: int, dtype: str):
    """Zero output projections, random output biases (where the layer has biases): each update then writes
    exactly its bias, so one added per rank (P b) shows as surely as a residual added per rank (P x)."""
    rng = np.random.default_rng(seed)
    names = [f"{kind}.{tp.OUT_BIAS[kind]}" for kind in cfg.sublayers]
    return tuple(p.replace({n: round_to(rng.normal(0.0, 1.0, p[n].shape), dtype) for n in names if n in p})
                 for p in params)


@pytest.mark.property("TP-2")
@pytest.mark.dtypes(*TP_DTYPES)
@pytest.mark.parametrize("ranks", RANKS)
@profiles.heavy(0.5)
@given(data=st.data())
def test_tensor_parallel_identity_at_zero(subject, case, dtype, ranks, prop, data):
    """With zero output projections every update is x + b bitwise (x + 0 = x without biases, as Llama): the
    all-reduce of zero partials is exactly 0, then bias and residual are added once. The input VJP is
    bitwise g."""
    shape, cfg = _draw_structure(data, subject, case, ranks, "zero")
    x = data.draw(hh.finite_arrays(dtype, shape, hh.identity_domain(dtype, shape[-1])), label="x")
    seed = data.draw(hh.seeds, label="seed")
    prop.example(cfg=cfg.describe(), shape=shape, seed=seed, ranks=ranks, max_abs_x=float(np.max(np.abs(x))))
    params = _random_output_biases(cfg, hh.params_for(subject, cfg, seed, dtype, perturb=True), seed + 2, dtype)
    expected = [x]
    for p in params:
        for kind in cfg.sublayers:
            bias = p.get(f"{kind}.{tp.OUT_BIAS[kind]}")
            expected.append(expected[-1] if bias is None else round_to(expected[-1] + bias, dtype))  # one rounding
    states = subject.tp_stack_forward(cfg, params, x, dtype, ranks).states
    prop.bitwise_equal(f"every state on {ranks} ranks with zero output projections (x + output bias, each added "
                       f"once)", states, np.stack(expected))
    g = hh.normal_input(seed + 1, shape, 1.0, dtype)
    prop.bitwise_equal(f"input VJP on {ranks} ranks with zero output projections",
                       subject.tp_stack_vjp(cfg, params, x, g, dtype, ranks).dx, g)

"""BI: bad input. Wrong shapes and dtypes get a clear error naming what was wrong; NaN and Inf travel
only where the maths sends them; empty inputs give empty outputs; large magnitudes are measured.

BI-1 tests the subject, not the suite's template: `Backend`'s public methods reject a wrong shape before the
adapter runs (backends/contract.py), so the shape cases call the adapter's hooks (`_stack_forward`,
`_fused_add_norm`) directly; a framework that broadcasts a (1, C) residual, behind an adapter that does not
guard it, fails (tests/mutants.py FusedSilentBroadcast). Every other case is a valid call and goes through the
public API."""
from __future__ import annotations

import dataclasses

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resconf.backends.dtypes import NARROW_DTYPES, max_finite, round_to
from resconf.backends.oracle import numpy_ref as ref
from resconf.conformance import hypothesis_helpers as hh
from resconf.conformance.requirements import require_branch, require_fused, require_placement


def _error_of(call) -> Exception | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001  any exception type will do: its message is what is checked
        return exc
    return None


def _names_shape(message: str, shape: tuple[int, ...]) -> bool:
    """The message shows the shape's dimensions in order, whatever the brackets: (2, 5, 16), [2, 5, 16]."""
    numbers = [int(n) for n in re.findall(r"\d+", message)]
    return any(tuple(numbers[i:i + len(shape)]) == shape for i in range(len(numbers) - len(shape) + 1))


def _check_rejected(prop, what: str, call, shapes) -> None:
    """The call must raise, and its message must name every shape in `shapes` (an entry that is a list
    is satisfied by naming any one of its shapes)."""
    exc = _error_of(call)
    if exc is None:
        prop.at_most(f"{what} was accepted silently", 1, 0)
        return
    groups = [s if isinstance(s, list) else [s] for s in shapes]
    unnamed = [g for g in groups if not any(_names_shape(str(exc), s) for s in g)]
    prop.at_most(f"{what}: the error must name {shapes}, it said {type(exc).__name__}: {str(exc)[:300]!r}; "
                 f"shapes not named", len(unnamed), 0)


INPUT_PROJECTION = {"mlp": "w_up", "attention": "wq"}  # the query projection: see the torch BI-3 finding


@pytest.mark.property("BI-1")
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_shape_mismatch(subject, case, dtype, placement, prop):
    """A branch writing d_model + 3 features: an error naming the branch's output weight or bias shape,
    and d_model."""
    require_placement(subject, placement)
    shape, cfg = hh.fixed_structure(subject, case, placement, "standard", layer=hh.first_layer(subject))
    prop.example(cfg=cfg.describe(), shape=shape)
    (p,) = hh.params_for(subject, cfg, 0, dtype)
    kind = cfg.sublayers[-1]
    w_name, b_name = (f"{kind}.{name}" for name in ref.OUTPUT_PROJECTION[kind])
    wider = {w_name: np.zeros(p[w_name].shape[:-1] + (cfg.d_model + 3,))}
    if cfg.bias:
        wider[b_name] = np.zeros(cfg.d_model + 3)
    wide = p.replace(wider)
    x = hh.normal_input(0, shape, 1.0, dtype)
    _check_rejected(prop, "a branch writing d_model + 3 features",
                    lambda: subject._stack_forward(cfg, (wide,), x, dtype),
                    ([a.shape for a in wider.values()], (cfg.d_model,)))


@pytest.mark.property("BI-1")
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_fused_shape_mismatch(subject, dtype, kind, prop):
    """A (1, C) residual must not broadcast silently (the error names both shapes); a weight of C + 1
    values is an error too, naming its shape and x's or the expected (C,)."""
    require_fused(subject, kind)
    x = hh.normal_input(0, (6, 16), 1.0, dtype)
    weight, bias = np.ones(16), np.zeros(16)
    prop.example(kind=kind, x_shape=x.shape)
    _check_rejected(prop, "a (1, C) residual", lambda: subject._fused_add_norm(
        x, x[:1], weight, bias, 1e-5, kind, dtype), (x.shape, (1, 16)))
    _check_rejected(prop, "a weight of C + 1 values", lambda: subject._fused_add_norm(
        x, x, np.ones(17), bias, 1e-5, kind, dtype), ((17,), [x.shape, (16,)]))


@pytest.mark.property("BI-2")
def test_dtype_errors_and_no_silent_downcast(subject, dtype, prop):
    """A dtype the backend does not know is an error naming it, on every API it offers. With
    residual_in_fp32, a float32 residual added to a bfloat16/float16 x stays float32: bitwise the
    float32 sum, not the narrow one."""
    prop.example(dtype=dtype)
    unknown = "float8_e4m3fn"
    calls = []
    if subject.capabilities.blocks:
        cfg = hh.fixed_structure(subject, 0, sorted(subject.capabilities.placements)[0], "standard",
                                 layer=hh.first_layer(subject))[1]
        params = hh.params_for(subject, cfg, 0, "float32")
        calls.append(("stack_forward", lambda: subject.stack_forward(cfg, params, np.zeros((1, 2, cfg.d_model)), unknown)))
    kinds = sorted(subject.capabilities.fused_kinds)
    if kinds:
        x = np.zeros((2, 16))
        calls.append(("fused_add_norm", lambda: subject.fused_add_norm(x, x, np.ones(16), None, 1e-5, kinds[0], unknown)))
    for api, call in calls:
        exc = _error_of(call)
        prop.at_most(f"{api} with dtype {unknown}: an error naming it (got {exc!r:.200})",
                     0 if exc is not None and unknown in str(exc) else 1, 0)
    if dtype in NARROW_DTYPES and kinds:
        x = hh.normal_input(1, (4, 32), 1.0, dtype)
        residual = hh.normal_input(2, (4, 32), 1.0, "float32")
        _, new_residual = subject.fused_add_norm(x, residual, np.ones(32), None, 1e-5, kinds[0], dtype, True)
        prop.bitwise_equal("residual_in_fp32: the returned residual against the float32 sum",
                           new_residual, round_to(x + residual, "float32"))


@pytest.mark.property("BI-3")
@pytest.mark.parametrize("branch", ["mlp", "linear", "attention", "preset"])
@pytest.mark.parametrize("special", ["nan", "inf"])
@given(data=st.data())
def test_nan_and_inf_locality(subject, case, dtype, branch, special, prop, data):
    """A NaN or Inf in token t reaches token t's output, and no other token for per-token branches
    (mlp, linear), no earlier token for causal attention (and for every preset layer, made causal). Never
    silently replaced."""
    require_placement(subject, "pre")
    if branch == "preset":
        shape, cfg = data.draw(hh.structures(subject, case, "pre", "standard", layer="preset"), label="structure")
        cfg = dataclasses.replace(cfg, causal=True)  # every preset layer with causal attention: no token sees later ones
    else:
        require_branch(subject, branch)
        shape, cfg = data.draw(hh.structures(subject, case, "pre", "standard", branches=(branch,)), label="structure")
    B, T, C = shape
    t, feature = data.draw(st.integers(0, T - 1), label="token"), data.draw(st.integers(0, C - 1), label="feature")
    prop.example(cfg=cfg.describe(), shape=shape, token=t, feature=feature, special=special)
    x = hh.normal_input(t, shape, 1.0, dtype)
    x[:, t, feature] = math.nan if special == "nan" else math.inf
    y = subject.stack_forward(cfg, hh.params_for(subject, cfg, 0, dtype, perturb=True), x, dtype).states[-1]
    bad = ~np.isfinite(y).all(axis=-1)  # (B, T): tokens with a non-finite output
    prop.at_most(f"batch rows where token {t}'s {special} vanished", int((~bad[:, t]).sum()), 0)
    attends = "attention" in cfg.sublayers
    reach = slice(0, t) if attends else np.arange(T) != t
    prop.at_most(f"{'earlier' if attends else 'other'} tokens the {special} reached", int(bad[:, reach].sum()), 0)


@pytest.mark.property("BI-3")
@pytest.mark.parametrize("branch", ["mlp", "linear", "attention"])
@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("where", ["norm_weight", "w_in", "w_out"])
@given(data=st.data())
def test_nan_in_a_weight_surfaces(subject, oracle, case, dtype, placement, where, branch, prop, data):
    """A NaN in a norm gain (after the norm's statistics) or in a branch weight reaches every output the
    maths sends it to (the oracle's non-finite outputs): a block that replaces a non-finite value by a
    finite one anywhere inside (after the norm, in the hidden layer, on the branch output) fails."""
    require_placement(subject, placement)
    require_branch(subject, branch)
    if where == "w_in" and branch == "linear":
        pytest.skip("the linear branch has no input projection")
    shape, cfg = data.draw(hh.structures(subject, case, placement, "standard", branches=(branch,)), label="structure")
    (p,) = hh.params_for(subject, cfg, 0, dtype, perturb=True)
    name = {"norm_weight": "norm_weight", "w_in": INPUT_PROJECTION.get(branch),
            "w_out": ref.OUTPUT_PROJECTION[branch][0]}
    name = f"{branch}.{name[where]}"
    weight = p[name].copy()
    element = data.draw(st.integers(0, weight.size - 1), label="element")
    prop.example(cfg=cfg.describe(), shape=shape, where=where, element=element)
    weight.flat[element] = math.nan
    p = p.replace({name: weight})
    x = hh.normal_input(element, shape, 1.0, dtype)
    y, want = (b.stack_forward(cfg, (p,), x, dtype).states[-1] for b in (subject, oracle))
    reached = ~np.isfinite(want)
    prop.at_most(f"outputs the NaN in {name}[{np.unravel_index(element, weight.shape)}] reaches in the maths "
                 f"({int(reached.sum())} of {y.size}) that came out finite", int((reached & np.isfinite(y)).sum()), 0)


@pytest.mark.property("BI-4")
@pytest.mark.parametrize("empty", ["batch", "sequence"])
def test_empty_input(subject, case, dtype, empty, prop):
    """An empty batch or sequence gives empty results of the right shapes, forward and backward."""
    if subject.capabilities.blocks:
        shape, cfg = hh.fixed_structure(subject, case, sorted(subject.capabilities.placements)[0], "standard",
                                        depths=(2,), layer=hh.first_layer(subject))
        shape = (0, shape[1], shape[2]) if empty == "batch" else (shape[0], 0, shape[2])
        prop.example(cfg=cfg.describe(), shape=shape)
        x = np.zeros(shape)
        params = hh.params_for(subject, cfg, 0, dtype)
        trace = subject.stack_forward(cfg, params, x, dtype)
        states = (cfg.n_updates + 1, *shape)
        prop.at_most(f"states shape {trace.states.shape} differs from {states}", int(trace.states.shape != states), 0)
        dx = subject.stack_vjp(cfg, params, x, x, dtype).dx
        prop.at_most(f"dx shape {dx.shape} differs from {shape}", int(dx.shape != shape), 0)
    for kind in sorted(subject.capabilities.fused_kinds):
        x = np.zeros((0, 16))
        out, new_residual = subject.fused_add_norm(x, x, np.ones(16), None, 1e-5, kind, dtype)
        prop.at_most(f"fused {kind} on 0 rows gave shapes {out.shape}, {new_residual.shape}",
                     int(out.shape != (0, 16) or new_residual.shape != (0, 16)), 0)


@pytest.mark.property("BI-5")
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_large_magnitudes(subject, oracle, case, dtype, placement, prop):
    """Sweeps |x| by powers of two up to the dtype's maximum and records the overflow threshold: the
    largest magnitude with a finite output (curve 'finite'). Gated only inside the identity domain
    (no norm statistic can overflow there): a non-finite output where the oracle's is finite fails."""
    require_placement(subject, placement)
    shape, cfg = hh.fixed_structure(subject, case, placement, "standard", norms=None, layer=hh.first_layer(subject))
    params = hh.params_for(subject, cfg, 0, dtype)
    top = math.frexp(max_finite(dtype))[1] - 1  # the largest power of two below the maximum
    exponents = list(range(0, top + 1, max(1, top // 32)))
    domain = hh.identity_domain(dtype, cfg.d_model)
    finite, threshold = [], 0.0
    for k in exponents:
        x = round_to(np.clip(np.random.default_rng(k).normal(size=shape), -1, 1) * 2.0**k, dtype)
        prop.example(cfg=cfg.describe(), shape=shape, magnitude=2.0**k)
        ok = bool(np.isfinite(subject.stack_forward(cfg, params, x, dtype).states[-1]).all())
        finite.append(float(ok))
        threshold = 2.0**k if ok else threshold
        if 2.0**k <= domain and np.isfinite(oracle.stack_forward(cfg, params, x, dtype).states[-1]).all():
            prop.at_most(f"non-finite output at |x| = 2^{k}, inside the domain, where the oracle is finite",
                         0 if ok else 1, 0)
    prop.curve("finite", [2.0**k for k in exponents], finite)
    prop.curve("overflow threshold", [0.0], [threshold])

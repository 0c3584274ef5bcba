"""The gate (conformance/gate.py): its covering meets every pair (or value) the whole product meets, and the
suite's selection keeps every property, dtype and rerun line."""
from __future__ import annotations

import itertools
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from resconf.conformance import gate

AXES = st.dictionaries(st.sampled_from("abcd"), st.integers(1, 4), min_size=1, max_size=4)


@st.composite
def products(draw):
    """A property's cases: the product of some axes, some combinations left out (as a skip would)."""
    sizes = draw(AXES)
    names = sorted(sizes)
    cases = [dict(zip(names, values)) for values in itertools.product(*(range(sizes[n]) for n in names))]
    keep = draw(st.lists(st.booleans(), min_size=len(cases), max_size=len(cases)))
    return [c for c, k in zip(cases, keep) if k] or cases[:1]


@settings(max_examples=200, deadline=None)
@given(products(), st.sampled_from([gate.PAIRS, gate.EACH]))
def test_covering_meets_all_the_product_meets(cases, strength):
    chosen = gate.covering([(c, {}) for c in cases], strength)
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(range(len(cases)))
    wanted = set().union(*(gate.targets(c, strength) for c in cases))
    met = set().union(*(gate.targets(cases[i], strength) for i in chosen))
    assert met == wanted


def test_pairs_finds_a_fault_of_two_values_that_each_misses():
    """A fault only where bfloat16 meets post (a mutant of two parameters): pairwise must run that case;
    one value at a time need not."""
    cases = [{"dtype": d, "placement": p} for d in ("float32", "bfloat16", "float16") for p in ("pre", "post")]
    faulty = cases.index({"dtype": "bfloat16", "placement": "post"})
    assert faulty in gate.covering([(c, {}) for c in cases], gate.PAIRS)
    assert len(gate.covering([(c, {}) for c in cases], gate.EACH)) == 3


def test_all_keeps_every_case_and_derived_values_are_met_once():
    cases = [({"dtype": d}, {"preset": p}) for d in ("a", "b") for p in ("gpt2", "llama", "gpt2")]
    assert gate.covering(cases, gate.ALL) == list(range(6))
    chosen = gate.covering(cases, gate.PAIRS)
    assert {cases[i][1]["preset"] for i in chosen} == {"gpt2", "llama"}
    assert {cases[i][0]["dtype"] for i in chosen} == {"a", "b"}


def _collected(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "resconf.conformance", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "--resconf-backend", "numpy", *args],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "::" in line]


def test_the_ci_gate_keeps_every_property_and_dtype_and_every_rerun_line_selects_its_case():
    every = _collected("--resconf-cover", "all")
    gated = _collected()  # the ci profile's default: pairs
    assert len(gated) < 0.7 * len(every)
    function_dtype = lambda ids: {(i.split("[")[0], i.split("[")[1].split("-")[1]) for i in ids if "[" in i}  # noqa: E731
    assert function_dtype(gated) == function_dtype(every)
    left_out = sorted(set(every) - set(gated))[0]
    assert _collected("-k", left_out.split("::")[-1]) == [left_out]

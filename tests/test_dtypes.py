"""The dtype record (backends/dtypes.py) is the one source of what the suite knows about a dtype: each record
agrees with the format's published facts, the derived names follow from the records, and one more row is
all the strategies, the budgets, the rounding, the emulated baseline and the report need to take a new dtype."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import ml_dtypes
import numpy as np
import pytest

from resconf.backends import config
from resconf.backends import dtypes
from resconf.backends.dtypes import DTYPE_INFO, DTYPES, NARROW_DTYPES, dtype_info

# IEEE 754 binary64/32/16 and bfloat16: significand bits p (implicit bit counted), exponent bits.
FORMATS = {"float64": (53, 11), "float32": (24, 8), "bfloat16": (8, 8), "float16": (11, 5)}


@pytest.mark.parametrize("name", DTYPES)
def test_each_record_agrees_with_the_formats_facts(name):
    info, finfo = dtype_info(name), ml_dtypes.finfo(DTYPE_INFO[name].numpy)
    assert info.name == name and info.bits == finfo.bits
    assert info.significand_bits == finfo.nmant + 1 and info.unit_roundoff == 2.0 ** -info.significand_bits
    assert info.max_finite == float(finfo.max) and info.smallest_normal == float(finfo.smallest_normal)
    if name in FORMATS:
        p, exponent_bits = FORMATS[name]
        assert info.significand_bits == p and info.bits == p + exponent_bits  # sign bit + (p - 1) + exponent
        assert info.smallest_normal == 2.0 ** (2 - 2 ** (exponent_bits - 1))
    assert dtypes.round_to(np.array([1.0 + info.unit_roundoff * 1.5]), name)[0] == 1.0 + 2 * info.unit_roundoff


def test_the_names_follow_from_the_records():
    assert config.DTYPES is DTYPES == tuple(DTYPE_INFO)
    assert [info.bits for info in DTYPE_INFO.values()] == sorted((i.bits for i in DTYPE_INFO.values()), reverse=True)
    # narrow means exactly "accumulates in float32", and an accumulator is itself a record that is not narrow
    assert NARROW_DTYPES == tuple(n for n, info in DTYPE_INFO.items() if info.accumulates_in == "float32" != n)
    assert all(not dtype_info(info.accumulates_in).narrow for info in DTYPE_INFO.values())
    assert {"bfloat16", "float16"} <= set(NARROW_DTYPES) and not {"float32", "float64"} & set(NARROW_DTYPES)


def test_an_unknown_dtype_and_a_claim_of_one_name_what_is_known():
    with pytest.raises(ValueError, match=r"dtype 'float8' is not one of \('float64', 'float32'"):
        dtypes.claims("float32", "float8")
    assert dtypes.claims("float32") == {"float32"}


# One row more in DTYPE_INFO, and nothing else: a consumer that spells the four names (a width table, a narrow
# tuple, a count of 4) fails here. The row goes into the module's source before any consumer imports it.
ONE_ROW = '    _info("float8_e4m3", "ml_dtypes.float8_e4m3fn", accumulates_in="float32"),\n'
NEW_DTYPE_CHECKS = textwrap.dedent('''
    import importlib.util, sys, warnings
    from pathlib import Path
    # the folder of resconf.backends, found without importing it (its __init__ would import dtypes)
    path = Path(importlib.util.find_spec("resconf.backends").submodule_search_locations[0]) / "dtypes.py"
    source = path.read_text()
    anchor = '    _info("float16", accumulates_in="float32"),\\n'
    assert source.count(anchor) == 1, "the float16 row moved: update tests/test_dtypes.py's anchor"
    spec = importlib.util.spec_from_loader("resconf.backends.dtypes", loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source.replace(anchor, anchor + ROW), str(path), "exec"), module.__dict__)

    import ml_dtypes
    import numpy as np
    from hypothesis import given, settings
    from resconf.backends.oracle import numpy_ops as ops
    from resconf.backends.oracle import numpy_ref as ref
    from resconf.backends.oracle.controls import Baseline
    from resconf.backends.config import DTYPES, BlockConfig
    from resconf.backends.dtypes import NARROW_DTYPES, element_bytes, round_to, smallest_normal
    from resconf.backends.params import draw_params
    from resconf.backends.oracle.emulated import Arithmetic, using
    from resconf.conformance import budgets, output_dtypes
    from resconf.conformance import hypothesis_helpers as hh
    from resconf.reports.drilldown import DTYPE_ORDER

    new, f8 = "float8_e4m3", np.dtype(ml_dtypes.float8_e4m3fn)
    assert DTYPES[-1] == new and new in NARROW_DTYPES and element_bytes(new) == 1
    u = 2.0 ** -4  # e4m3: 3 stored significand bits
    assert budgets.budget("forward", new, 0.0).floor == 2 * u and budgets.summation_bound(new, 8) == 16 * u
    assert round_to(np.array([1.0 + 1.5 * u, 500.0]), new)[0] == 1.0 + 2 * u  # 500 is past e4m3fn's 448
    assert Arithmetic(new).accumulator(f8) == np.float32
    with using(Arithmetic(new)) as cast:
        x = np.random.default_rng(0).standard_normal((4, 8)).astype(f8)
        got = ops.linear(cast(x), cast(np.eye(8).astype(f8)), None)
    assert np.asarray(got).dtype == f8 and np.array_equal(np.asarray(got).astype(np.float64), x.astype(np.float64))
    assert output_dtypes.returned_dtype(round_to(np.array([1.0, 1.125]), new)) == new
    assert DTYPE_ORDER == DTYPES

    bound = hh.identity_domain(new, 16)
    @settings(max_examples=30, database=None, deadline=None)
    @given(hh.finite_arrays(new, (2, 3, 16), bound), hh.finite_arrays(new, (8,), 1.0, subnormals=True))
    def draws_are_values_of_the_dtype(a, tiny):
        assert np.array_equal(round_to(a, new), a) and np.array_equal(round_to(tiny, new), tiny)
        assert np.all(np.abs(tiny) <= smallest_normal(new))
    draws_are_values_of_the_dtype()
    assert hh.resolvable(np.ones(4), new) and not hh.resolvable(np.full(4, 1e-3), new)

    cfg = BlockConfig(placement="pre", norm="layernorm", branch="mlp", depth=1, d_model=16)
    params = tuple(p.map(lambda t: round_to(t, new)) for p in draw_params(cfg, 0))
    x = hh.normal_input(0, (2, 3, 16), 1.0, new)
    with using(Baseline(seed=0).arithmetic(new)) as cast:  # the budgets' baseline arithmetic, past its claim
        out = np.asarray(ref.stack_forward(cfg, cast(params), cast(x)).states[-1])
    assert out.dtype == f8 and np.isfinite(out.astype(np.float64)).all()
    print("ok")
''')


def test_one_row_adds_a_dtype_to_every_consumer(tmp_path):
    script = tmp_path / "one_more_row.py"  # a file, so that a failure's traceback shows the line that failed
    script.write_text(f"ROW = {ONE_ROW!r}\n" + NEW_DTYPE_CHECKS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]

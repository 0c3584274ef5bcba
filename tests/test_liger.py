"""Liger-Kernel's add + norm kernels (backends/kernels/liger_fused.py) against the float64 oracle, run by Triton's
interpreter on the CPU: forward and backward for RMSNorm (fused add) and LayerNorm (add not fused), what
each casting mode does, what is written in place, and the interpreter gaps the bridge covers.

The interpreter needs TRITON_INTERPRET=1 before triton is first imported (backends/kernels/liger_interpret.py),
which a pytest process that has run other tests cannot promise. So in a plain `pytest` the interpreted
tests skip here and `test_interpreted_cases_in_their_own_process` runs this file again in a child pytest
with the variable set; in the child (or under TRITON_INTERPRET=1 from the start) they run directly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("liger_kernel")
triton = pytest.importorskip("triton")
torch = pytest.importorskip("torch")

import triton.language as tl  # noqa: E402
from triton.language.extra import libdevice  # noqa: E402

from resconf.backends.base import DeviceUnavailable  # noqa: E402
from resconf.backends.dtypes import round_to  # noqa: E402
from resconf.backends.oracle.numpy_ref import NumpyReference  # noqa: E402
from tests.test_kernels import (EPS, assert_deterministic, assert_empty_batch_works,  # noqa: E402
                                assert_matches_reference, make_inputs, rel_error)

ROOT = Path(__file__).resolve().parents[1]
REF = NumpyReference()
CHILD = "RESCONF_LIGER_CHILD"  # set in the child run, so that it does not start another


def _interpreted() -> bool:
    """Whether Liger's kernels and Triton's own helpers are interpreted in this process."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.sum, InterpretedFunction)


INTERPRETED = _interpreted()
interpreted = pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 from the start of the process: "
                                 "run by test_interpreted_cases_in_their_own_process")


def test_interpreted_cases_in_their_own_process():
    if INTERPRETED:
        pytest.skip("this process interprets: the cases run here directly")
    if os.environ.get(CHILD):
        pytest.fail("the child process was started without a working interpreter")
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD: "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).relative_to(ROOT)), "-q", "-n", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the interpreted Liger tests failed:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-2000:]


# --- without the interpreter ---

def test_unknown_casting_mode_is_an_error_naming_the_modes():
    from resconf.backends.kernels.liger_fused import LigerFusedBackend
    with pytest.raises(ValueError, match=r"casting_mode='fp8'.*'llama', 'gemma', 'none'"):
        LigerFusedBackend("cpu", casting_mode="fp8")


def test_cpu_without_the_interpreter_names_the_fix(monkeypatch):
    if INTERPRETED:
        pytest.skip("this process interprets")
    from resconf.backends.kernels.liger_fused import LigerFusedBackend
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        LigerFusedBackend("cpu")


def test_cuda_without_a_gpu_is_device_unavailable():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from resconf.backends.registry import load_backend
    with pytest.raises(DeviceUnavailable, match="needs a CUDA GPU"):
        load_backend("liger", "cuda")


# --- interpreted: the adapter against the oracle ---

@pytest.fixture(scope="module")
def backends():
    if not INTERPRETED:
        pytest.skip("needs TRITON_INTERPRET=1 from the start of the process")
    from resconf.backends.kernels.liger_fused import LigerFusedBackend
    return {mode: LigerFusedBackend("cpu", casting_mode=mode) for mode in ("llama", "gemma", "none")}


@interpreted
def test_claims(backends):
    caps = backends["llama"].capabilities
    assert caps.fused_kinds == {"rmsnorm", "layernorm"} and not caps.blocks
    assert caps.dtypes == {"float32", "float16"}, "bfloat16 is not claimed under the interpreter"
    assert set(backends["llama"].versions()) == {"liger_kernel", "triton", "torch"}


@interpreted
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode,kind", [("llama", "rmsnorm"), ("llama", "layernorm"), ("gemma", "rmsnorm"),
                                       ("none", "rmsnorm")])
@pytest.mark.parametrize("rows,cols", [(6, 33), ((2, 3), 100)])  # odd widths; a (B, T, C) input
def test_matches_reference(backends, mode, kind, dtype, rows, cols):
    """Forward and VJP within the case's budget; the new residual bitwise the unfused add."""
    assert_matches_reference(backends[mode], rows, cols, dtype, kind, residual_in_fp32=False)


@interpreted
def test_layernorm_keeps_a_float32_residual(backends):
    """The add before Liger's LayerNorm is ours (not fused), so residual_in_fp32 holds there."""
    assert_matches_reference(backends["llama"], 5, 33, "float16", "layernorm", residual_in_fp32=True)


@interpreted
@pytest.mark.parametrize("mode", ["llama", "gemma", "none"])
def test_rmsnorm_rounds_a_float32_residual_to_x_dtype(backends, mode):
    """Liger's fused add+RMSNorm has no residual_in_fp32 (conformance/xfails/liger.toml): a float32 residual
    is added in float32 and the new residual stored in x's dtype, every element one float16 rounding off."""
    x, _, w, _, _, _ = make_inputs(4, 64, "float16", "rmsnorm", seed=1)
    r = round_to(np.random.default_rng(2).standard_normal((4, 64)), "float32")
    out, new_res = backends[mode].fused_add_norm(x, r, w, None, EPS, "rmsnorm", "float16", True)
    want = x + r  # exact in float64: the float32 sum is what XB-3 asks for
    assert np.array_equal(new_res, round_to(want, "float16")), "not the float16 rounding of the float32 sum"
    assert not np.array_equal(new_res, round_to(want, "float32"))
    # the norm is taken of the float32 sum: the output is as accurate as without residual_in_fp32
    ref_out, _ = REF.fused_add_norm(x, r, w, None, EPS, "rmsnorm", "float16", True)
    assert rel_error(out, ref_out) < 1e-3


@interpreted
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_deterministic(backends, kind):
    assert_deterministic(backends["llama"], 5, 33, "float16", kind)


@interpreted
def test_empty_batch(backends):
    assert_empty_batch_works(backends["llama"], "float16")


@interpreted
@pytest.mark.parametrize("kind,with_bias", [("rmsnorm", False), ("layernorm", True)])
def test_bench_callable_agrees_with_the_adapter(backends, kind, with_bias):
    b = backends["llama"]
    x, r, w, bias, g, _ = make_inputs(6, 40, "float32", "layernorm", seed=5)
    bias = bias if with_bias else None
    native = [None if a is None else b.to_native(a, "float32") for a in (x, r, w, bias, g)]
    out, new_res, dx, dres, dw, *db = b.bench_fused_add_norm(kind, "float32", with_bias, True)(*native)
    want = b.fused_add_norm_vjp(x, r, w, bias, EPS, kind, "float32", g, np.zeros_like(g))
    assert np.array_equal(out.detach().numpy(), b.fused_add_norm(x, r, w, bias, EPS, kind, "float32")[0])
    assert np.array_equal(dx.numpy(), want.dx) and np.array_equal(dres.numpy(), want.dresidual)
    assert np.array_equal(dw.numpy(), want.dweight) and len(db) == int(with_bias)


# --- interpreted: what each casting mode does (float16: the modes differ only below float32) ---

def _rms(backend, x, r, w, dtype="float16"):
    return backend.fused_add_norm(x, r, w, None, EPS, "rmsnorm", dtype)[0]


@interpreted
def test_modes_agree_bitwise_in_float32(backends):
    x, r, w, *_ = make_inputs(6, 100, "float32", "rmsnorm", seed=7)
    outs = [_rms(backends[m], x, r, w, "float32") for m in ("llama", "gemma", "none")]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@interpreted
def test_llama_rounds_the_normalised_sum_before_the_weight(backends):
    """"llama": out = fp16(fp16(s * rstd) * w): with w = 1 the kernel shows fp16(s * rstd), and the output
    for any w is that times w, rounded once more. "gemma" multiplies in float32 and rounds once."""
    x, r, w, *_ = make_inputs(8, 256, "float16", "rmsnorm", seed=8)
    for mode, two_roundings in (("llama", True), ("gemma", False)):
        xhat = _rms(backends[mode], x, r, np.ones(256))
        twice = round_to(xhat * w, "float16")
        out = _rms(backends[mode], x, r, w)
        assert np.array_equal(out, twice) == two_roundings, f"{mode}: {np.mean(out != twice):.3f} of outputs differ"


@interpreted
def test_gemma_is_the_suite_s_one_rounding_rule(backends):
    """Against the oracle on the same float16 inputs: gemma (all float32, one rounding) errs about half as
    much as llama (two roundings); measured ~0.35 u and ~0.7 u (u = 2^-11)."""
    x, r, w, *_ = make_inputs(64, 512, "float16", "rmsnorm", seed=9)
    want = REF.fused_add_norm(x, r, w, None, EPS, "rmsnorm", "float16")[0]
    err = {m: rel_error(_rms(backends[m], x, r, w), want) / 2**-11 for m in ("llama", "gemma")}
    assert err["gemma"] < 0.5 < err["llama"] < 1.0, err


@interpreted
def test_none_overflows_where_float32_statistics_do_not(backends):
    """"none" sums s * s in float16 (tl.sum keeps a float16 input's dtype): the row sum passes 65504 once
    rms(s) > 256 / sqrt(C), 8 at C = 1024, and then rstd = rsqrt(inf) = 0 and the output is 0. llama and
    gemma take the statistics in float32 and stay within a float16 rounding of the oracle."""
    x, r, w, *_ = make_inputs(4, 1024, "float16", "rmsnorm", seed=10)  # rms(x + r) ~ sqrt(2)
    for rms, overflows in ((5.0, False), (12.0, True)):
        xs, rs = (round_to(rms / np.sqrt(2) * a, "float16") for a in (x, r))
        want = REF.fused_add_norm(xs, rs, w, None, EPS, "rmsnorm", "float16")[0]
        for mode in ("llama", "gemma"):
            assert rel_error(_rms(backends[mode], xs, rs, w), want) < 2**-10, (mode, rms)
        none = _rms(backends["none"], xs, rs, w)
        assert np.all(none == 0) == overflows and (overflows or rel_error(none, want) < 2**-10), rms


# --- interpreted: what is written in place ---

@interpreted
@pytest.mark.parametrize("casting_mode", ["llama", "gemma", "none"])
def test_forward_keeps_x_and_residual_and_backward_keeps_dy_by_default(casting_mode):
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
    from resconf.backends.kernels import liger_interpret as liger_interpret
    x, r, w = (torch.randn(*s, dtype=torch.float16, requires_grad=True) for s in ((4, 33), (4, 33), (33,)))
    dy, ds = torch.randn(4, 33, dtype=torch.float16), torch.randn(4, 33, dtype=torch.float16)
    before = [t.detach().clone() for t in (x, r, dy, ds)]
    with liger_interpret.bridged(sys.modules["liger_kernel.ops.fused_add_rms_norm"]):
        y, s = LigerFusedAddRMSNormFunction.apply(x, r, w, EPS, 0.0, casting_mode, False)  # in_place=False
        torch.autograd.grad([y, s], [x, r, w], [dy, ds])
    assert all(torch.equal(a, b) for a, b in zip((x, r, dy, ds), before)), "an input or cotangent was overwritten"
    assert s.data_ptr() not in (x.data_ptr(), r.data_ptr()), "the new residual aliases an input"


@interpreted
def test_in_place_backward_overwrites_the_callers_cotangent():
    """liger_fused_add_rms_norm (the functional form) defaults to in_place=True: its backward writes dx into
    the dy tensor the caller passed, so the caller's cotangent is lost after .backward()."""
    from liger_kernel.transformers.functional import liger_fused_add_rms_norm
    from resconf.backends.kernels import liger_interpret as liger_interpret
    x, r, w = (torch.randn(*s, requires_grad=True) for s in ((4, 33), (4, 33), (33,)))
    dy = torch.randn(4, 33)
    kept = dy.clone()
    with liger_interpret.bridged(sys.modules["liger_kernel.ops.fused_add_rms_norm"]):
        y, s = liger_fused_add_rms_norm(x, r, w, EPS)
        dx, = torch.autograd.grad(y, [x], dy)
    assert not torch.equal(dy, kept), "dy unchanged: Liger no longer writes the backward in place"
    assert torch.equal(dy, dx), "dy holds dx"


# --- interpreted: the interpreter gaps, unbridged (each fails while Triton has the gap) ---

@interpreted
def test_unbridged_liger_fails_on_the_float_argument():
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
    from triton.runtime.errors import InterpreterError
    x = torch.randn(2, 8)
    with pytest.raises(InterpreterError, match="'float' object has no attribute 'to'"):
        LigerFusedAddRMSNormFunction.apply(x, x, torch.ones(8), EPS, 0.0, "llama", False)


@triton.jit
def _libdevice_rsqrt_kernel(X, Y):
    tl.store(Y, libdevice.rsqrt(tl.load(X)))


@interpreted
def test_unbridged_libdevice_returns_none():
    from triton.runtime.errors import InterpreterError
    x, y = torch.tensor([4.0]), torch.zeros(1)
    with pytest.raises(InterpreterError, match="cannot convert None"):
        _libdevice_rsqrt_kernel[(1,)](x, y)


@interpreted
def test_the_bridge_puts_everything_back(backends):
    import liger_kernel.ops.fused_add_rms_norm as rms_ops
    from triton.runtime import interpreter
    from resconf.backends.kernels import liger_interpret as liger_interpret
    before = (interpreter._implicit_cvt, rms_ops.rsqrt)
    with liger_interpret.bridged(rms_ops):
        assert interpreter._implicit_cvt is not before[0] and rms_ops.rsqrt is not before[1]
    assert (interpreter._implicit_cvt, rms_ops.rsqrt) == before
    assert rms_ops.rsqrt.__module__ == "triton.language.extra.libdevice"


@interpreted
@pytest.mark.parametrize("mode", ["llama", "none"])
def test_the_wrapped_op_is_liger_function_bitwise(backends, mode):
    """resconf::liger_fused_add_rms_norm (what XB-8 opchecks) gives LigerFusedAddRMSNormFunction's outputs and
    gradients bit for bit: it wraps the same kernels, it is not a second implementation."""
    x, r, w, _, g, gr = make_inputs((2, 3), 33, "float16", "rmsnorm", seed=3)
    backend = backends[mode]
    (call,) = backend.fused_add_norm_ops(x, r, w, None, EPS, "rmsnorm", "float16")
    y, s, _ = call.op(*call.args)
    cot = [backend._tensor(a, "float16") for a in (g, gr)]
    op_grads = torch.autograd.grad([y, s], call.args[:3], cot)
    inputs = [t.detach().clone().requires_grad_() for t in call.args[:3]]
    with backend._bridge():
        want = backend.rms_ops.LigerFusedAddRMSNormFunction.apply(*inputs, EPS, 0.0, mode, False)
        want_grads = torch.autograd.grad(want, inputs, cot)
    for got, expected in zip((y, s, *op_grads), (*want, *want_grads)):
        assert got.dtype == expected.dtype and torch.equal(got, expected)

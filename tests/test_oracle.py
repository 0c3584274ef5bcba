"""The oracle against central finite differences in float64 (GR-4), plus exact checks of its forward.

Every VJP is checked along seeded random directions: <g, J v> by central differences against <VJP(g), v>,
relative error <= numpy_ref.FD_REL_TOL. Ops get O(1) inputs (so every path, e.g. attention scores, carries
weight); stacks get perturbed parameters (nonzero biases and gains, a ReZero gate that is not 1).
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from resconf.backends import numpy_ops as ops
from resconf.backends import numpy_ref as ref
from resconf.backends.config import BRANCHES, NORMS, PLACEMENTS, BlockConfig
from resconf.backends.dtypes import numpy_dtype, round_to
from resconf.backends.params import draw_params
from resconf.backends.registry import load_backend

B, T, C, DEPTH = 2, 3, 8, 2
EPS = 1e-5


def rand(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def assert_fd(f, x, g, vjp_x, seed, what):
    check = ref.fd_directional_check(f, x, g, vjp_x, seed)
    assert check.ok, f"{what}: {check}"


# --- the checker itself ---

def test_fd_check_accepts_the_true_gradient_and_rejects_a_slightly_wrong_one():
    x, g = rand(B, T, C, seed=1), rand(B, T, C, seed=2)
    assert ref.fd_directional_check(np.sin, x, g, g * np.cos(x), 0).ok
    assert not ref.fd_directional_check(np.sin, x, g, g * np.cos(x) * (1 + 1e-5), 0).ok
    assert ref.fd_directional_check(lambda a: x, x, g, np.zeros_like(x), 0).rel_error == 0.0  # f ignores x


# --- ops ---

def test_linear():
    x, w, b, g = rand(B, T, 4, seed=1), rand(4, 5, seed=2), rand(5, seed=3), rand(B, T, 5, seed=4)
    dx, dw, db = ops.linear_vjp(x, w, b, g)
    assert_fd(lambda a: ops.linear(a, w, b), x, g, dx, 10, "linear dx")
    assert_fd(lambda a: ops.linear(x, a, b), w, g, dw, 11, "linear dw")
    assert_fd(lambda a: ops.linear(x, w, a), b, g, db, 12, "linear db")


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
def test_gelu(gelu):
    forward, vjp = {"tanh": (ops.gelu_tanh, ops.gelu_tanh_vjp), "exact": (ops.gelu_exact, ops.gelu_exact_vjp)}[gelu]
    x, g = rand(B, T, C, seed=1, scale=2.0), rand(B, T, C, seed=2)
    assert_fd(forward, x, g, vjp(x, g), 10, f"gelu_{gelu}")


def test_gelu_exact_and_tanh_agree_to_the_approximation_error():
    x = np.linspace(-5, 5, 101)
    assert np.max(np.abs(ops.gelu_exact(x) - ops.gelu_tanh(x))) < 1e-3


@pytest.mark.parametrize("kind, with_bias", [("layernorm", True), ("layernorm", False),
                                             ("rmsnorm", True), ("rmsnorm", False)])
def test_norm(kind, with_bias):
    forward, vjp = ref.NORM[kind], ref.NORM_VJP[kind]
    x, w, g = rand(B, T, C, seed=1, scale=3.0) + 0.5, 1.0 + rand(C, seed=2, scale=0.3), rand(B, T, C, seed=3)
    b = rand(C, seed=4) if with_bias else None
    dx, dw, db = vjp(x, w, b, EPS, g)
    assert_fd(lambda a: forward(a, w, b, EPS), x, g, dx, 10, f"{kind} dx")
    assert_fd(lambda a: forward(x, a, b, EPS), w, g, dw, 11, f"{kind} dw")
    if with_bias:
        assert_fd(lambda a: forward(x, w, a, EPS), b, g, db, 12, f"{kind} db")
    else:
        assert db is None


def test_softmax():
    s, g = rand(B, T, 5, seed=1, scale=3.0), rand(B, T, 5, seed=2)
    assert_fd(ops.softmax, s, g, ops.softmax_vjp(ops.softmax(s), g), 10, "softmax")


@pytest.mark.parametrize("n_heads", [1, 2])
def test_causal_attention(n_heads):
    qkv, g = rand(B, 4, 3 * C, seed=1), rand(B, 4, C, seed=2)
    dqkv = ops.causal_attention_vjp(qkv, n_heads, g)
    for seed in range(3):
        assert_fd(lambda a: ops.causal_attention(a, n_heads), qkv, g, dqkv, seed, f"attention nh={n_heads}")
    for part, name in enumerate("qkv"):  # each of q, k, v on its own, so a small part cannot hide behind v
        mask = np.zeros_like(qkv)
        mask[..., part * C:(part + 1) * C] = 1.0
        assert_fd(lambda a: ops.causal_attention(qkv + mask * (a - qkv), n_heads), qkv, g, mask * dqkv, 7,
                  f"attention d{name}")


# --- stacks: every placement x norm x branch x gelu ---

def configs():
    for placement, norm, branch in itertools.product(PLACEMENTS, NORMS, BRANCHES):
        for gelu in (("tanh", "exact") if branch == "mlp" else ("tanh",)):
            yield BlockConfig(placement=placement, norm=norm, branch=branch, gelu=gelu, depth=DEPTH, d_model=C,
                              n_heads=2)


def perturbed_params(cfg, seed=0):
    params = draw_params(cfg, seed, perturb=True)
    if cfg.placement == "rezero":  # a gate of 1 would hide a missing factor of the gate
        params = tuple(dataclasses.replace(p, gate=np.array(0.7 - 0.2 * i)) for i, p in enumerate(params))
    return params


def with_tensor(params, layer, name, value):
    return tuple(dataclasses.replace(p, **{name: value}) if i == layer else p for i, p in enumerate(params))


@pytest.mark.parametrize("cfg", list(configs()), ids=BlockConfig.describe)
def test_stack_vjp(cfg):
    params = perturbed_params(cfg)
    x, g = rand(B, T, C, seed=1), rand(B, T, C, seed=2)
    grads = ref.stack_vjp(cfg, params, x, g)
    out = lambda ps, x0: ref.stack_forward(cfg, ps, x0).states[-1]  # noqa: E731
    assert_fd(lambda a: out(params, a), x, g, grads.dx, 3, "dx")
    for layer, dp in enumerate(grads.dparams):
        for name, dt in dp.items():
            assert dt.shape == getattr(params[layer], name).shape, f"block {layer} d{name}"
            assert_fd(lambda a: out(with_tensor(params, layer, name, a), x), getattr(params[layer], name), g, dt,
                      layer, f"block {layer} d{name}")


@pytest.mark.parametrize("placement", ["rezero", "plain"])
def test_unused_norm_parameters_get_zero_gradient(placement):
    cfg = BlockConfig(placement=placement, depth=DEPTH, d_model=C)
    grads = ref.stack_vjp(cfg, perturbed_params(cfg), rand(B, T, C, seed=1), rand(B, T, C, seed=2))
    for dp in grads.dparams:
        assert not dp.norm_weight.any() and not dp.norm_bias.any()


def test_stack_trace_records_branch_before_gate():
    cfg = BlockConfig(placement="rezero", depth=DEPTH, d_model=C)
    params, x = perturbed_params(cfg), rand(B, T, C, seed=1)
    trace = ref.stack_forward(cfg, params, x)
    assert trace.states.shape == (DEPTH + 1, B, T, C) and trace.branches.shape == (DEPTH, B, T, C)
    for layer, p in enumerate(params):
        np.testing.assert_array_equal(trace.branches[layer], ref.branch(cfg, p, trace.states[layer]))
        np.testing.assert_array_equal(trace.states[layer + 1], trace.states[layer] + p.gate * trace.branches[layer])


# --- fused add + norm ---

@pytest.mark.parametrize("kind, with_bias", [("layernorm", True), ("layernorm", False),
                                             ("rmsnorm", True), ("rmsnorm", False)])
def test_fused_add_norm_vjp(kind, with_bias):
    x, r, w = rand(B, T, C, seed=1), rand(B, T, C, seed=2), 1.0 + rand(C, seed=3, scale=0.3)
    b = rand(C, seed=4) if with_bias else None
    g_out, g_res = rand(B, T, C, seed=5), rand(B, T, C, seed=6)
    grads = ref.fused_add_norm_vjp(x, r, w, b, EPS, kind, "float64", g_out, g_res)

    def both(x_, r_, w_, b_):  # <g_out, out> + <g_res, new_residual> is pulled back: stack the two outputs
        return np.stack(ref.fused_add_norm(x_, r_, w_, b_, EPS, kind, "float64"))
    g = np.stack([g_out, g_res])
    assert_fd(lambda a: both(a, r, w, b), x, g, grads.dx, 10, "dx")
    assert_fd(lambda a: both(x, a, w, b), r, g, grads.dresidual, 11, "dresidual")
    assert_fd(lambda a: both(x, r, a, b), w, g, grads.dweight, 12, "dweight")
    if with_bias:
        assert_fd(lambda a: both(x, r, w, a), b, g, grads.dbias, 13, "dbias")
    else:
        assert grads.dbias is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_fused_residual_is_bitwise_the_native_add(dtype, residual_in_fp32):
    backend = load_backend("numpy")
    x, r = round_to(rand(64, C, seed=1), dtype), round_to(rand(64, C, seed=2, scale=1e-3), dtype)
    w = round_to(1.0 + rand(C, seed=3, scale=0.3), dtype)
    out, new_res = backend.fused_add_norm(x, r, w, None, EPS, "rmsnorm", dtype, residual_in_fp32)
    res_dtype = numpy_dtype("float32" if residual_in_fp32 else dtype)
    native = (x.astype(res_dtype) + r.astype(res_dtype)).astype(np.float64)
    np.testing.assert_array_equal(new_res, native)
    np.testing.assert_allclose(out, ops.rmsnorm(native, w, None, EPS), rtol=1e-14)  # normalises the rounded sum


def test_fused_rejects_a_broadcastable_residual():
    backend = load_backend("numpy")
    x = rand(4, C, seed=1)
    with pytest.raises(ValueError, match=r"\(1, 8\).*\(4, 8\)"):
        backend.fused_add_norm(x, x[:1], np.ones(C), None, EPS, "rmsnorm", "float32")


def test_stack_rejects_a_wrong_width():
    cfg = BlockConfig(depth=1, d_model=C)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*d_model=8"):
        load_backend("numpy").stack_forward(cfg, draw_params(cfg, 0), rand(B, T, 4), "float32")


# --- exact checks ---

@pytest.mark.parametrize("norm, branch", list(itertools.product(NORMS, BRANCHES)))
def test_zero_init_pre_stack_is_exactly_the_identity(norm, branch):
    cfg = BlockConfig(placement="pre", norm=norm, branch=branch, init="zero", depth=4, d_model=C)
    params, x, g = draw_params(cfg, 0, perturb=True), rand(B, T, C, seed=1), rand(B, T, C, seed=2)
    np.testing.assert_array_equal(ref.stack_forward(cfg, params, x).states[-1], x)
    np.testing.assert_array_equal(ref.stack_vjp(cfg, params, x, g).dx, g)


def test_rezero_init_stack_is_exactly_the_identity():
    cfg = BlockConfig(placement="rezero", init="rezero", depth=4, d_model=C)
    x = rand(B, T, C, seed=1)
    np.testing.assert_array_equal(ref.stack_forward(cfg, draw_params(cfg, 0, perturb=True), x).states[-1], x)


def test_layernorm_standardises_each_token():
    x = rand(B, T, C, seed=1, scale=5.0) + 3.0
    y = ops.layernorm(x, np.ones(C), np.zeros(C), EPS)
    var = x.var(axis=-1)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(y.var(axis=-1), var / (var + EPS), rtol=1e-12)  # 1 up to eps


def test_rmsnorm_gives_unit_mean_square():
    x = rand(B, T, C, seed=1, scale=5.0)
    y = ops.rmsnorm(x, np.ones(C), None, 1e-300)  # eps ~ 0: exactly unit mean square
    np.testing.assert_allclose(np.mean(y**2, axis=-1), 1.0, rtol=1e-14)


def test_causal_attention_ignores_later_tokens():
    qkv = rand(B, 5, 3 * C, seed=1)
    later = qkv.copy()
    later[:, 3:] = rand(B, 2, 3 * C, seed=2)
    later[0, 4, 2 * C] = np.nan  # a NaN in a later value must not reach earlier tokens through 0 * NaN
    a, b = ops.causal_attention(qkv, 2), ops.causal_attention(later, 2)
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert np.isnan(b[0, 4]).any() and not np.isnan(b[1]).any()


def test_empty_batch_and_sequence():
    for shape in [(0, T, C), (B, 0, C)]:
        for branch in BRANCHES:
            cfg = BlockConfig(branch=branch, depth=DEPTH, d_model=C)
            trace = ref.stack_forward(cfg, draw_params(cfg, 0), np.zeros(shape))
            assert trace.states.shape == (DEPTH + 1, *shape)


# --- the residual write's Jacobian (used by GR-1 and GR-2) ---

@pytest.mark.parametrize("placement, branch", [("pre", "attention"), ("pre", "mlp"), ("rezero", "mlp"),
                                               ("post", "linear"), ("deepnorm", "mlp"), ("plain", "attention")])
def test_branch_jacobian(placement, branch):
    cfg = BlockConfig(placement=placement, branch=branch, depth=DEPTH, d_model=4, n_heads=2)
    p, x, g = perturbed_params(cfg)[0], rand(1, 3, 4, seed=1), rand(1, 3, 4, seed=2)
    J = ref.branch_jacobian(cfg, p, x)
    assert J.shape == (12, 12)
    assert_fd(lambda a: ref.residual_write(cfg, p, a), x, g, (J.T @ g.ravel()).reshape(x.shape), 5, "J^T g")
    if placement in ("pre", "rezero"):  # GR-1 on the oracle itself: block VJP = g + J^T g
        dx, _ = ref.block_vjp(cfg, p, x, g)
        np.testing.assert_allclose(dx.ravel(), g.ravel() + J.T @ g.ravel(), rtol=1e-13, atol=1e-15)


def test_backend_claims_everything():
    backend = load_backend("numpy")
    caps = backend.capabilities
    assert isinstance(backend, ref.NumpyReference) and backend.name == "numpy"
    assert caps.dtypes == {"float64", "float32", "bfloat16", "float16"} and caps.fused_kinds == {"rmsnorm", "layernorm"}
    assert all(caps.supports(cfg) for cfg in configs())

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

from resconf.backends.oracle import numpy_ops as ops
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.base import Capabilities
from resconf.backends.config import BRANCHES, FEATURES, NORMS, PLACEMENTS, BlockConfig, deepnet_constants
from resconf.backends.dtypes import DTYPES, numpy_dtype, round_to
from resconf.backends.params import LayerParams, draw_params, expected_std
from resconf.backends.presets import ENCODER_DECODER, PRESETS, preset
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


@pytest.mark.parametrize("causal", [True, False])
def test_attention(causal):
    q, k, v, g = (rand(B, 2, 4, 3, seed=i) for i in range(1, 5))  # (B, nh, T, hd)
    dq, dk, dv = ops.attention_vjp(q, k, v, ops.attention(q, k, v, causal), causal, g)
    assert_fd(lambda a: ops.attention(a, k, v, causal), q, g, dq, 10, "attention dq")
    assert_fd(lambda a: ops.attention(q, a, v, causal), k, g, dk, 11, "attention dk")
    assert_fd(lambda a: ops.attention(q, k, a, causal), v, g, dv, 12, "attention dv")


def test_bidirectional_attention_sees_later_tokens():
    q, k, v = (rand(B, 2, 5, 4, seed=i) for i in range(1, 4))
    later = v.copy()
    later[:, :, 4] += 1.0
    assert not np.array_equal(ops.attention(q, k, v, False)[:, :, 0], ops.attention(q, k, later, False)[:, :, 0])
    np.testing.assert_array_equal(ops.attention(q, k, v, True)[:, :, :4], ops.attention(q, k, later, True)[:, :, :4])


def test_repeat_kv_groups_consecutive_query_heads():
    k = rand(B, 2, 3, 4, seed=1)
    r = ops.repeat_kv(k, 3)
    assert r.shape == (B, 6, 3, 4)
    for head in range(6):
        np.testing.assert_array_equal(r[:, head], k[:, head // 3])  # query head h reads kv head h // groups
    g = rand(B, 6, 3, 4, seed=2)
    assert_fd(lambda a: ops.repeat_kv(a, 3), k, g, ops.repeat_kv_vjp(g, 3), 10, "repeat_kv")


def test_rope():
    x, g = rand(B, 2, 6, 4, seed=1), rand(B, 2, 6, 4, seed=2)
    assert_fd(lambda a: ops.rope(a, 10000.0), x, g, ops.rope_vjp(x, 10000.0, g), 10, "rope")
    y = ops.rope(x, 10000.0)
    np.testing.assert_array_equal(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-14)  # a rotation
    # half-split: dimension i pairs with i + hd/2 (GPT-NeoX, Llama), not with i + 1 (GPT-J's interleaved form)
    one = np.zeros((1, 1, 2, 4))
    one[..., 1, 0] = 1.0  # position 1, first dimension of the first pair
    rotated = ops.rope(one, 10000.0)[0, 0, 1]
    np.testing.assert_allclose(rotated, [np.cos(1.0), 0.0, np.sin(1.0), 0.0], atol=1e-15)


@pytest.mark.parametrize("interleaved", [False, True])
def test_partial_rope(interleaved):
    """The first `dim` dims rotate at angles t * base^(-2i/dim), the rest pass through; interleaved pairs
    dimension 2i with 2i + 1 (GPT-J's rotate_every_two), half-split i with i + dim/2."""
    x, g = rand(B, 2, 6, 8, seed=1), rand(B, 2, 6, 8, seed=2)
    assert_fd(lambda a: ops.rope(a, 100.0, 4, interleaved), x, g, ops.rope_vjp(x, 100.0, g, 4, interleaved), 10,
              "partial rope")
    y = ops.rope(x, 100.0, 4, interleaved)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    one = np.zeros((1, 1, 2, 8))
    one[..., 1, 0] = 1.0  # position 1, first dimension of the first pair
    rotated = ops.rope(one, 100.0, 4, interleaved)[0, 0, 1]
    partner = 1 if interleaved else 2
    want = np.zeros(8)
    want[0], want[partner] = np.cos(1.0), np.sin(1.0)
    np.testing.assert_allclose(rotated, want, atol=1e-15)
    second = np.zeros((1, 1, 2, 8))
    second[..., 1, 2 if interleaved else 1] = 1.0  # the second pair turns at base^(-2/dim) = 1/10 rad
    turned = ops.rope(second, 100.0, 4, interleaved)[0, 0, 1]
    assert turned[2 if interleaved else 1] == pytest.approx(np.cos(0.1), abs=1e-15)


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_activations(act):
    forward, vjp = {"relu": (ops.relu, ops.relu_vjp), "silu": (ops.silu, ops.silu_vjp)}[act]
    x, g = rand(B, T, C, seed=1, scale=2.0), rand(B, T, C, seed=2)
    if act == "relu":
        x = np.where(np.abs(x) < 1e-2, 0.5, x)  # finite differences are not derivatives across the kink
    assert_fd(forward, x, g, vjp(x, g), 10, act)


def test_silu_is_x_times_the_logistic_function():
    x = np.linspace(-30, 30, 121)
    np.testing.assert_allclose(ops.silu(x), x / (1.0 + np.exp(-x)), rtol=1e-14, atol=1e-300)


# --- stacks: every placement x norm x branch x GELU, and every layer preset in every placement ---

def configs():
    for placement, norm, branch in itertools.product(PLACEMENTS, NORMS, BRANCHES):
        for gelu in (("tanh", "exact") if branch == "mlp" else ("tanh",)):
            yield BlockConfig(placement=placement, norm=norm, branch=branch, gelu=gelu, depth=DEPTH, d_model=C,
                              n_heads=2)
    for name, placement in itertools.product(PRESETS, PLACEMENTS):
        yield preset(name, placement=placement, depth=DEPTH, d_model=C, final_norm=placement == "pre")
    yield preset("llama", activation="gelu", gelu="exact", depth=DEPTH, d_model=C)  # GeGLU
    yield preset("gpt2", skip_scale=0.9, branch_scale=0.5, depth=DEPTH, d_model=C)  # He et al.'s lambda
    yield preset("encoder", placement="deepnorm", skip_scale=1.7, depth=DEPTH, d_model=C)  # a free alpha
    yield preset("gpt2", qk_norm=True, n_kv_heads=1, activation="relu", rope=True, rope_base=500.0, depth=DEPTH,
                 d_model=C, n_heads=2)
    yield preset("gpt2", branch_norm=True, depth=DEPTH, d_model=C)  # a LayerNorm sandwich, biased norms
    yield preset("olmo2", norm="layernorm", n_heads=4, n_kv_heads=2, attention_bias=True, depth=DEPTH, d_model=C)
    yield preset("gptj", qk_norm=True, qk_norm_scope="projection", layer_scale=0.5, depth=DEPTH, d_model=C)
    for name, placement in itertools.product(ENCODER_DECODER, PLACEMENTS):  # memory_len 6, T 3: S != T
        yield preset(name, placement=placement, depth=DEPTH, d_model=C, final_norm=placement == "pre")
    yield preset("encdec_decoder", placement="deepnorm", init="deepnorm", encoder_layers=12, decoder_layers=6,
                 n_kv_heads=1, norm="rmsnorm", bias=False, memory_len=2, depth=DEPTH, d_model=C)  # T5-like, MQA


def perturbed_params(cfg, seed=0):
    """Random gains and biases; a ReZero gate and LayerScale away from 1 and from each other, which would
    otherwise hide a missing factor."""
    params = draw_params(cfg, seed, perturb=True)
    rng = np.random.default_rng(seed + 1)
    return tuple(p.replace({name: t * rng.uniform(0.5, 0.9, t.shape) for name, t in p.items()
                            if name.endswith((".gate", ".layer_scale"))}) for p in params)


def with_tensor(params, layer, name, value):
    return tuple(p.replace({name: value}) if i == layer else p for i, p in enumerate(params))


@pytest.mark.parametrize("cfg", list(configs()), ids=BlockConfig.describe)
def test_stack_vjp(cfg):
    params = perturbed_params(cfg)
    x, g = rand(B, T, C, seed=1), rand(B, T, C, seed=2)
    grads = ref.stack_vjp(cfg, params, x, g)
    out = lambda ps, x0: ref.stack_forward(cfg, ps, x0).output  # noqa: E731
    step = ref.fd_step(cfg)
    check = ref.fd_directional_check(lambda a: out(params, a), x, g, grads.dx, 3, step)
    assert check.ok, f"dx: {check}"
    for layer, dp in enumerate(grads.dparams):
        assert [n for n, _ in dp.items()] == [n for n, _ in params[layer].items()], "gradients named as the parameters"
        for name, dt in dp.items():
            assert dt.shape == params[layer][name].shape, f"layer {layer} d{name}"
            check = ref.fd_directional_check(lambda a: out(with_tensor(params, layer, name, a), x),
                                             params[layer][name], g, dt, layer, step)
            assert check.ok, f"layer {layer} d{name}: {check}"


@pytest.mark.parametrize("placement", ["rezero", "plain"])
def test_unused_norm_parameters_get_zero_gradient(placement):
    cfg = BlockConfig(placement=placement, depth=DEPTH, d_model=C)
    grads = ref.stack_vjp(cfg, perturbed_params(cfg), rand(B, T, C, seed=1), rand(B, T, C, seed=2))
    for dp in grads.dparams:
        assert not dp["mlp.norm_weight"].any() and not dp["mlp.norm_bias"].any()


def test_stack_trace_records_branch_before_gate():
    cfg = BlockConfig(placement="rezero", depth=DEPTH, d_model=C)
    params, x = perturbed_params(cfg), rand(B, T, C, seed=1)
    trace = ref.stack_forward(cfg, params, x)
    assert trace.states.shape == (DEPTH + 1, B, T, C) and trace.writes.shape == (DEPTH, B, T, C)
    for layer, p in enumerate(params):
        s = p.sub("mlp")
        np.testing.assert_array_equal(trace.writes[layer], ref.mlp(cfg, s, trace.states[layer]))
        np.testing.assert_array_equal(trace.states[layer + 1], trace.states[layer] + s.gate * trace.writes[layer])


def test_trace_has_one_state_per_sublayer_and_one_per_parallel_layer():
    x = rand(B, T, C, seed=1)
    for cfg, updates in ((preset("gpt2", depth=3, d_model=C), 6), (preset("gptj", depth=3, d_model=C), 3)):
        trace = ref.stack_forward(cfg, draw_params(cfg, 0), x)
        assert cfg.n_updates == updates and trace.states.shape[0] == updates + 1 and trace.final is None
        np.testing.assert_allclose(trace.states[-1], x + trace.writes.sum(axis=0), rtol=1e-12, atol=1e-14)


def test_parallel_layer_is_x_plus_both_branches_of_one_norm():
    cfg = preset("gptj", depth=1, d_model=C, final_norm=True)
    (p,), x = perturbed_params(cfg), rand(B, T, C, seed=1)
    h = ref.norm(cfg, p.sub("attention"), x)  # the one shared norm
    y = x + ref.attention(cfg, p.sub("attention"), h) + ref.mlp(cfg, p.sub("mlp"), h)
    trace = ref.stack_forward(cfg, (p,), x)
    np.testing.assert_allclose(trace.states[-1], y, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(trace.final, ref.norm(cfg, p.sub("final"), y), rtol=1e-13)
    assert "mlp.norm_weight" not in p and "final.norm_weight" in p


def test_sandwich_and_reordered_norms():
    """Gemma 3: x + N_post(F(N_pre(x))) per sublayer; OLMo 2: x + N_post(F(x)), no norm before the branch."""
    x = rand(B, T, C, seed=1)
    for name, pre_norm in (("gemma3", True), ("olmo2", False)):
        cfg = preset(name, depth=1, d_model=C, sublayers=("mlp",))
        (p,) = perturbed_params(cfg)
        s = p.sub("mlp")
        h = ref.norm(cfg, s, x) if pre_norm else x
        post = ref.NORM[cfg.norm](ref.mlp(cfg, s, h), s.branch_norm_weight, s.branch_norm_bias, cfg.eps)
        np.testing.assert_allclose(ref.stack_forward(cfg, (p,), x).states[-1], x + post, rtol=1e-13, atol=1e-15)
        assert ("mlp.norm_weight" in p) == pre_norm and "mlp.branch_norm_weight" in p


def test_qk_norm_over_the_whole_projection():
    """OLMo 2 normalises all of a token's q (nh * hd values) with one RMS, then splits the heads; Qwen 3 each head."""
    cfg = preset("olmo2", depth=1, d_model=C, n_heads=2)
    s = perturbed_params(cfg)[0].sub("attention")
    assert s.q_norm_weight.shape == (C,)
    h = rand(B, T, C, seed=1)
    q = h @ s.wq
    want = q / np.sqrt(np.mean(q**2, axis=-1, keepdims=True) + cfg.eps) * s.q_norm_weight  # (B, T, C)
    _, _, _, q1, *_ = ref._attention_inputs(cfg, s, h)
    np.testing.assert_allclose(ops.merge_heads(q1), want, rtol=1e-13)
    per_head = dataclasses.replace(cfg, qk_norm_scope="head")
    assert draw_params(per_head, 0)[0]["attention.q_norm_weight"].shape == (cfg.head_dim,)


def test_gptj_preset_is_gpt_j():
    """GPT-J: parallel from one LayerNorm, interleaved rotary on a quarter of each head, attention without biases,
    MLP with them, GELU (tanh); Phi keeps the biases and rotates the whole head half-split."""
    cfg = preset("gptj", d_model=1024, n_heads=4)  # head_dim 256, as GPT-J 6B
    assert cfg.parallel and cfg.shared_norm and cfg.rope_interleaved and cfg.rotary_dim == 64
    assert not cfg.has_bias("attention") and cfg.has_bias("mlp") and cfg.activation == "gelu" and cfg.gelu == "tanh"
    assert {"attention_bias", "partial_rope", "interleaved_rope"} <= cfg.features
    names = [n for n, _ in draw_params(preset("gptj", d_model=C), 0)[0].items()]
    assert "attention.bq" not in names and "attention.bo" not in names and "mlp.b_up" in names
    phi = preset("phi", d_model=C)
    assert phi.parallel and phi.rotary_dim == phi.head_dim and not phi.rope_interleaved and phi.has_bias("attention")


def test_swiglu_is_silu_of_the_gate_times_up():
    cfg = preset("llama", d_model=C)
    s = perturbed_params(cfg)[0].sub("mlp")
    h = rand(B, T, C, seed=1)
    silu = lambda z: z / (1.0 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(ref.mlp(cfg, s, h), (silu(h @ s.w_gate) * (h @ s.w_up)) @ s.w_down, rtol=1e-12)


def test_cross_attention_reads_every_memory_token_and_only_the_memory():
    """Queries from the stream, keys and values from the memory: no mask (query 0 sees the memory's last token),
    and the stream's other tokens do not reach a token's cross-attention (per-token in h)."""
    cfg = preset("encdec_decoder", depth=1, d_model=C)
    s = perturbed_params(cfg)[0].sub("cross_attention")
    h = rand(B, T, C, seed=1)
    assert s.memory.shape == (cfg.memory_len, C) and cfg.memory_len != T
    moved = type(s)(**{**vars(s), "memory": s.memory.copy()})
    moved.memory[-1] += 1.0  # the memory's last token, S - 1 > T - 1
    assert not np.allclose(ref.cross_attention(cfg, s, h)[:, 0], ref.cross_attention(cfg, moved, h)[:, 0])
    other = h.copy()
    other[:, 1:] = rand(B, T - 1, C, seed=3)
    np.testing.assert_array_equal(ref.cross_attention(cfg, s, h)[:, 0], ref.cross_attention(cfg, s, other)[:, 0])
    p = ops.softmax((h @ s.wq + s.bq) @ (s.memory @ s.wk + s.bk).T / np.sqrt(C))  # one head: the definition
    one = dataclasses.replace(cfg, n_heads=1)
    np.testing.assert_allclose(ref.cross_attention(one, s, h), (p @ (s.memory @ s.wv + s.bv)) @ s.wo + s.bo,
                               rtol=1e-13)


# --- published constants (depth counted in layers) ---

def test_gpt2_init_matches_nanogpt():
    """nanoGPT: c_proj weights std 0.02 / sqrt(2 * n_layer) = 0.0040825 for GPT-2 small (12 layers)."""
    cfg = preset("gpt2", init="gpt2", depth=12, d_model=768, n_heads=12)
    assert cfg.n_writes == 24
    assert expected_std(cfg, "out") == pytest.approx(0.0040825, abs=5e-8)
    assert expected_std(cfg, "weight") == 0.02
    (p,) = draw_params(dataclasses.replace(cfg, depth=1, d_model=64, n_heads=4), 0)  # one 2-sublayer layer
    assert p["attention.wo"].std() == pytest.approx(0.02 / np.sqrt(2), rel=0.05)  # a 1-layer model writes twice


def test_expected_std_rejects_what_is_not_a_weight_role():
    with pytest.raises(ValueError, match="role='w_out' is not one of"):
        expected_std(BlockConfig(), "w_out")


def test_a_slice_of_a_model_takes_the_models_init_constants():
    """A depth-1 slice of a 12-layer model: DeepNet's alpha and beta and GPT-2's std follow model_depth."""
    whole = preset("encoder", placement="deepnorm", init="deepnorm", depth=12, d_model=64, n_heads=4)
    part = dataclasses.replace(whole, depth=1, model_depth=12)
    assert part.skip == whole.skip and part.deepnorm_beta == whole.deepnorm_beta
    assert dataclasses.replace(whole, depth=1).skip != whole.skip  # without it, the slice's own depth
    gpt2 = preset("gpt2", init="gpt2", depth=1, model_depth=12, d_model=768, n_heads=12)
    assert expected_std(gpt2, "out") == pytest.approx(0.0040825, abs=5e-8)
    with pytest.raises(ValueError, match="model_depth=1 must be >= depth=2"):
        BlockConfig(depth=2, model_depth=1)


def test_deepnorm_constants_match_deepnet():
    """DeepNet, encoder of N = 12 layers: alpha = (2N)^(1/4) = 2.21336, beta = (8N)^(-1/4) = 0.31947."""
    cfg = preset("encoder", placement="deepnorm", init="deepnorm", depth=12, d_model=64, n_heads=4)
    assert cfg.deepnorm_alpha == pytest.approx(2.21336, abs=5e-6) and cfg.skip == cfg.deepnorm_alpha
    assert cfg.deepnorm_beta == pytest.approx(0.31947, abs=5e-6)
    p = draw_params(cfg, 0)[0]
    xavier = lambda w: np.sqrt(2.0 / sum(w.shape))  # noqa: E731
    for name in ("attention.wq", "attention.wk"):  # not scaled
        assert p[name].std() == pytest.approx(xavier(p[name]), rel=0.1), name
    for name in ("attention.wv", "attention.wo", "mlp.w_up", "mlp.w_down"):  # scaled by beta
        assert p[name].std() == pytest.approx(cfg.deepnorm_beta * xavier(p[name]), rel=0.1), name


def test_deepnorm_beta_override_and_the_encoder_decoder_constants():
    """init_beta replaces (8N)^(-1/4) in the draw; DeepNet's encoder-decoder constants at N = M = 6 (table 1);
    an init_beta without deepnorm init would do nothing, so it is refused."""
    cfg = preset("encoder", placement="deepnorm", init="deepnorm", depth=6, d_model=64, n_heads=4)
    alpha, beta = deepnet_constants("encoder", 6, 6)
    assert (alpha, beta) == pytest.approx((0.81 * 6 ** (5 / 16), 0.87 * 6 ** (-5 / 16)))
    assert deepnet_constants("decoder", 6, 6) == pytest.approx((18 ** 0.25, 72 ** -0.25))
    tuned = dataclasses.replace(cfg, skip_scale=alpha, init_beta=beta)
    assert tuned.skip == alpha and tuned.deepnorm_beta == beta != cfg.deepnorm_beta
    ratio = draw_params(tuned, 0)[0]["mlp.w_down"] / draw_params(cfg, 0)[0]["mlp.w_down"]
    assert np.allclose(ratio, beta / cfg.deepnorm_beta)
    with pytest.raises(ValueError, match="init_beta=0.5 is deepnorm init's gain"):
        BlockConfig(init="standard", init_beta=0.5)
    with pytest.raises(ValueError, match="expected part 'encoder' or 'decoder'"):
        deepnet_constants("middle", 6, 6)


def test_encoder_decoder_presets_take_deepnets_constants_for_their_part():
    """N = 12 encoder and M = 6 decoder layers: the decoder's alpha (3M)^(1/4) and beta (12M)^(-1/4) on its
    self-attention, cross-attention (values and output) and mlp; the encoder's 0.81 (N^4 M)^(1/16), 0.87 (N^4
    M)^(-1/16); each part's init constants follow its own layer count."""
    decoder = preset("encdec_decoder", placement="deepnorm", init="deepnorm", encoder_layers=12, decoder_layers=6,
                     depth=2, d_model=64, n_heads=4)
    encoder = preset("encdec_encoder", placement="deepnorm", init="deepnorm", encoder_layers=12, decoder_layers=6,
                     depth=2, d_model=64, n_heads=4)
    assert (decoder.skip, decoder.deepnorm_beta) == pytest.approx((18 ** 0.25, 72 ** -0.25))
    assert (encoder.skip, encoder.deepnorm_beta) == deepnet_constants("encoder", 12, 6)
    assert decoder.model_depth == 6 and encoder.model_depth == 12 and not encoder.causal
    p = draw_params(decoder, 0)[0]
    xavier = lambda w: np.sqrt(2.0 / sum(w.shape))  # noqa: E731
    for name in ("cross_attention.wv", "cross_attention.wo"):
        assert p[name].std() == pytest.approx(decoder.deepnorm_beta * xavier(p[name]), rel=0.1), name
    assert p["cross_attention.wq"].std() == pytest.approx(xavier(p["cross_attention.wq"]), rel=0.1)
    pre = preset("encdec_decoder", depth=2, d_model=64, n_heads=4)  # pre, standard: no DeepNet constants
    assert pre.skip == 1.0 and pre.skip_scale is None and pre.init_beta is None and pre.init_depth == 2
    assert preset("encdec_decoder", placement="deepnorm", depth=6, d_model=C).skip == pytest.approx(18 ** 0.25)


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


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != "float64"])
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


def test_stack_rejects_a_record_that_does_not_fit_the_table():
    cfg = preset("llama", depth=1, d_model=C)
    (p,) = draw_params(cfg, 0)
    backend = load_backend("numpy")
    with pytest.raises(ValueError, match=r"attention.wk has shape \(8, 8\), expected \(8, 4\)"):
        backend.stack_forward(cfg, (p.replace({"attention.wk": np.zeros((C, C))}),), rand(B, T, C), "float32")
    with pytest.raises(ValueError, match=r"tensors not used \['mlp.b_up'\]"):
        backend.stack_forward(cfg, (LayerParams({**p.tensors, "mlp.b_up": np.zeros(32)}),), rand(B, T, C), "float32")


# --- exact checks ---

@pytest.mark.parametrize("cfg", [BlockConfig(placement="pre", norm=norm, branch=branch, init="zero", depth=4, d_model=C)
                                 for norm, branch in itertools.product(NORMS, BRANCHES)]
                         + [preset(name, init="zero", depth=4, d_model=C) for name in (*PRESETS, *ENCODER_DECODER)],
                         ids=BlockConfig.describe)
def test_zero_init_pre_stack_is_exactly_the_identity(cfg):
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
    q, k, v = (rand(B, 2, 5, 4, seed=i) for i in range(1, 4))
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 3:], v2[:, :, 3:] = rand(B, 2, 2, 4, seed=5), rand(B, 2, 2, 4, seed=6)
    v2[0, 0, 4, 0] = np.nan  # a NaN in a later value must not reach earlier tokens through 0 * NaN
    a, b = ops.attention(q, k, v, True), ops.attention(q, k2, v2, True)
    np.testing.assert_array_equal(a[:, :, :3], b[:, :, :3])
    assert np.isnan(b[0, 0, 4]).any() and not np.isnan(b[1]).any()


def test_empty_batch_and_sequence():
    for shape in [(0, T, C), (B, 0, C)]:
        for branch in BRANCHES:
            cfg = BlockConfig(branch=branch, depth=DEPTH, d_model=C)
            trace = ref.stack_forward(cfg, draw_params(cfg, 0), np.zeros(shape))
            assert trace.states.shape == (DEPTH + 1, *shape)


# --- the residual write's Jacobian (used by GR-1 and GR-2) ---

@pytest.mark.parametrize("cfg", [BlockConfig(placement=placement, branch=branch, depth=DEPTH, d_model=4, n_heads=2)
                                 for placement, branch in [("pre", "attention"), ("pre", "mlp"), ("rezero", "mlp"),
                                                           ("post", "linear"), ("deepnorm", "mlp"), ("plain", "attention")]]
                         + [preset("gptj", depth=DEPTH, d_model=4, n_heads=2),
                            preset("llama", placement="rezero", depth=DEPTH, d_model=4, n_heads=2, n_kv_heads=1)],
                         ids=BlockConfig.describe)
def test_branch_jacobian(cfg):
    p, x, g = perturbed_params(cfg)[0], rand(1, 3, 4, seed=1), rand(1, 3, 4, seed=2)
    for kinds in cfg.updates:
        J = ref.branch_jacobian(cfg, p, kinds, x)
        assert J.shape == (12, 12)
        assert_fd(lambda a: ref.residual_write(cfg, p, kinds, a), x, g, (J.T @ g.ravel()).reshape(x.shape), 5,
                  f"J^T g of {kinds}")
        if cfg.placement in ("pre", "rezero"):  # GR-1 on the oracle itself: the update's VJP = g + J^T g
            dx, _ = ref.update_vjp(cfg, p, kinds, x, g)
            np.testing.assert_allclose(dx.ravel(), g.ravel() + J.T @ g.ravel(), rtol=1e-13, atol=1e-15)


def test_cross_attention_is_claimed_as_a_feature_not_as_a_block_branch():
    """A backend without the feature skips the decoder layer, naming it; no single-sublayer block is one."""
    decoder = preset("encdec_decoder", d_model=C)
    assert Capabilities(features=frozenset(FEATURES) - {"cross_attention"}).why_not(decoder) == \
        "does not claim cross_attention"
    assert Capabilities(features=frozenset(FEATURES)).supports(decoder)
    with pytest.raises(ValueError, match="branch='cross_attention' is not one of"):
        BlockConfig(branch="cross_attention")


def test_backend_claims_everything():
    backend = load_backend("numpy")
    caps = backend.capabilities
    assert isinstance(backend, ref.NumpyReference) and backend.name == "numpy"
    assert caps.dtypes == {"float64", "float32", "bfloat16", "float16"} and caps.fused_kinds == {"rmsnorm", "layernorm"}
    assert all(caps.supports(cfg) for cfg in configs())

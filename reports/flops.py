"""The work a timed layer stack does: FLOPs for % of the matmul peak, bytes for % of the memory roofline.

A transformer layer at a realistic width is compute-bound, so its time is judged against the measured matmul
peak (bench_roofline.MatmulPeak: 2·n³ FLOPs per n x n matmul) first, and against the memory roofline beside it.
With T tokens (one sequence), C = d_model, K = the key/value width (n_kv_heads · head_dim; C without GQA),
F = the MLP's hidden width (d_ff), and depth L:

  FLOPs, forward, per layer   2·T·C·(2·C + 2·K)         q, k, v and out projections
                              + 4·T²·C                  scores and the weighted sum, the whole T x T matrix
                                                        (the dense work of a causal kernel that does not skip)
                              + 2·T·C·F·(3 if gated else 2)   the MLP's matrices (SwiGLU has three)
  forward+backward            3 x forward               the backward computes the input's and the weights'
                                                        gradients: two matmuls for each of the forward's
  Norms, activations, RoPE and the residual adds are elementwise: left out of the FLOPs, left to the bytes.

  bytes, forward              P·s + 2·T·C·L·s           every weight read once, the stream read and written
                                                        once per layer (s: itemsize, P: parameters)
  forward+backward            3·P·s + 6·T·C·L·s         weights read twice and their gradients written once;
                                                        the stream's traffic three times over
Both are lower bounds: the intermediate activations (attention scores, the MLP's hidden) are left out, as a
fused kernel keeps them on chip. The two fractions are read side by side; neither is a limit on its own.

The same models hold for every backend timed on a preset, the real modules (backends/modules: torch_nn,
hf_gpt2, hf_llama, flax_block, equinox_block, named in RESCONF_BENCH_BACKENDS) included: each runs exactly
the preset's configuration (conformance checks it computes the same function), so its matrices are these.
What a module does beyond them is elementwise or a lookup and is left out as the norms are: GPT2Model adds
its position embedding (T·C, zeros), nn.TransformerEncoder builds a T x T causal mask per call; the
embedding tables users feed `inputs_embeds` past are never read. torch_nn's forward-only call takes its
inference fast path where it applies (one fused op per layer): the same matrices, so the same FLOPs.
"""
from __future__ import annotations

from resconf.backends.config import BlockConfig


def layer_forward_flops(cfg: BlockConfig, tokens: int) -> int:
    c, t = cfg.d_model, tokens
    k = (cfg.n_kv_heads or cfg.n_heads) * cfg.head_dim
    f = cfg.d_ff or cfg.mlp_ratio * c
    flops = 0
    if "attention" in cfg.sublayers:
        flops += 2 * t * c * (2 * c + 2 * k) + 4 * t * t * c
    if "mlp" in cfg.sublayers:
        flops += 2 * t * c * f * (3 if cfg.gated else 2)
    return flops


def stack_flops(cfg: BlockConfig, tokens: int, backward: bool) -> int:
    return cfg.depth * layer_forward_flops(cfg, tokens) * (3 if backward else 1)


def stack_bytes(parameters: int, cfg: BlockConfig, tokens: int, itemsize: int, backward: bool) -> int:
    stream = 2 * tokens * cfg.d_model * cfg.depth
    return (3 if backward else 1) * (parameters + stream) * itemsize


def matmul_flops(n: int) -> int:
    """One n x n by n x n matmul: n³ multiply-adds."""
    return 2 * n ** 3


PRESETS = ("gpt2", "llama")  # the presets (backends/presets.py) the asv grid times as stacks


def preset_config(preset: str, d_model: int, depth: int) -> BlockConfig:
    """The benchmarked layer at width d_model: 64-dim heads as both models use; Llama with half as many
    key/value heads (GQA) and its SwiGLU width, 2/3 of 4·C rounded up to a multiple of 64."""
    from resconf.backends import presets

    heads = max(1, d_model // 64)
    fields = {"d_model": d_model, "n_heads": heads, "depth": depth}
    if preset == "llama":
        fields |= {"n_kv_heads": max(1, heads // 2), "d_ff": -(-8 * d_model // 3 // 64) * 64}
    return getattr(presets, preset)(**fields)


def layer_parameters(cfg: BlockConfig) -> int:
    """The weights of one layer's matrices (biases and norm scales left out: a lower bound on P)."""
    c, k, f = cfg.d_model, (cfg.n_kv_heads or cfg.n_heads) * cfg.head_dim, cfg.d_ff or cfg.mlp_ratio * cfg.d_model
    attention = c * (2 * c + 2 * k) if "attention" in cfg.sublayers else 0
    return attention + (c * f * (3 if cfg.gated else 2) if "mlp" in cfg.sublayers else 0)


PRESET_OPS = {"preset_stack_forward": False, "preset_stack_forward_backward": True}  # op -> backward
MATMUL_OP = "matmul"


def work(op: str, params: dict, itemsize: int) -> tuple[int, int | None] | None:
    """(FLOPs, bytes moved or None) of one call of `op` with asv's parameters; None: no FLOP model for it."""
    if op == MATMUL_OP:
        return matmul_flops(params["n"]), 3 * params["n"] ** 2 * itemsize
    if op not in PRESET_OPS:
        return None
    (tokens, d_model), backward = params["shape"], PRESET_OPS[op]
    cfg = preset_config(params["preset"], d_model, params["depth"])
    parameters = cfg.depth * layer_parameters(cfg)
    return stack_flops(cfg, tokens, backward), stack_bytes(parameters, cfg, tokens, itemsize, backward)

"""The layers people ship, as BlockConfigs: what the suite rotates through besides single-sublayer blocks.

Each preset fixes a layer's structure and features; the test fixes placement, init, depth and width.
Head counts follow the width so that every preset fits the suite's small shapes (C = 8, 16, 32).
"""
from __future__ import annotations

from resconf.backends.config import BlockConfig, deepnet_constants

TWO_SUBLAYERS = ("attention", "mlp")


def gpt2(**fields) -> BlockConfig:
    """GPT-2 / nanoGPT: LayerNorm with bias, multi-head causal attention, GELU (tanh) MLP, biased linears."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "layernorm", "activation": "gelu", "gelu": "tanh",
                          **fields})


def llama(**fields) -> BlockConfig:
    """Llama / Mistral / Qwen 2: RMSNorm, grouped-query attention with RoPE, SwiGLU, no biases."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "rmsnorm", "n_heads": 4, "n_kv_heads": 2,
                          "rope": True, "activation": "silu", "gated": True, "bias": False, **fields})


def _is_pre(fields) -> bool:
    """Parallel layers and a missing input norm exist only under pre (other placements run sequentially)."""
    return fields.get("placement", "pre") == "pre"


def _quarter_of_head(fields) -> int:
    """A quarter of the head's dims (GPT-J rotates 64 of 256, GPT-NeoX 25 %), even, and at least 4 where the head
    has them: with 2 rotated dims the interleaved and half-split pairings are the same pair."""
    head_dim = fields.get("d_model", 16) // fields.get("n_heads", 2)
    return min(head_dim, max(4, head_dim // 8 * 2))


def gptj(**fields) -> BlockConfig:
    """GPT-J: attention and MLP in parallel from one shared LayerNorm; RoPE on the first quarter of each head
    with interleaved pairs (rotate_every_two); no biases in attention, biases in the MLP; GELU (tanh).
    PaLM's parallel layer has this structure (one shared norm feeding both sublayers, one write), with features
    other presets carry (multi-query attention: modern; SwiGLU and no biases: llama), so it is not a preset of
    its own: each preset more shifts which presets the ci profile's four dtypes of a case meet (docs/spec.md)."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "parallel": _is_pre(fields), "norm": "layernorm",
                          "rope": True, "rope_dim": _quarter_of_head(fields), "rope_interleaved": True,
                          "attention_bias": False, "gelu": "tanh", **fields})


def phi(**fields) -> BlockConfig:
    """Phi (Hugging Face's PhiDecoderLayer with partial_rotary_factor=1): GPT-J's parallel layer with one
    shared LayerNorm, but RoPE half-split over the whole head and biases on every linear."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "parallel": _is_pre(fields), "norm": "layernorm",
                          "rope": True, **fields})


def neox(**fields) -> BlockConfig:
    """GPT-NeoX / Pythia: attention and MLP in parallel, each from its own LayerNorm; RoPE half-split on the
    first quarter of each head (rotary_pct=0.25); biased linears; exact GELU."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "parallel": _is_pre(fields), "shared_norm": False,
                          "norm": "layernorm", "rope": True, "rope_dim": _quarter_of_head(fields), "gelu": "exact",
                          **fields})


def olmo2(**fields) -> BlockConfig:
    """OLMo 2: the norm moved onto the branch's output, x + RMSNorm(F(x)) (under pre; other placements keep
    their own norm and add this one); RMSNorm over the whole q and k projections before RoPE; SwiGLU; no biases."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "rmsnorm", "input_norm": not _is_pre(fields),
                          "branch_norm": True, "qk_norm": True,
                          "qk_norm_scope": "projection", "rope": True, "activation": "silu", "gated": True,
                          "bias": False, **fields})


def gemma3(**fields) -> BlockConfig:
    """Gemma 2/3: sandwich norms, x + RMSNorm_post(F(RMSNorm_pre(x))), around each sublayer; grouped-query
    attention with per-head QK-norm (Gemma 3) and RoPE; GeGLU (tanh); no biases."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "rmsnorm", "branch_norm": True, "n_heads": 4,
                          "n_kv_heads": 2, "qk_norm": True, "rope": True, "activation": "gelu", "gelu": "tanh",
                          "gated": True, "bias": False, **fields})


def encoder(**fields) -> BlockConfig:
    """BERT / ViT encoder: bidirectional attention, exact GELU, LayerNorm with bias."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "layernorm", "causal": False, "gelu": "exact",
                          **fields})


def modern(**fields) -> BlockConfig:
    """The remaining features together: multi-query attention with per-head QK-norm before RoPE (Qwen 3),
    LayerScale, a ReLU MLP of odd width, LayerNorm without bias, two parallel norms, a constant branch scale."""
    parallel = _is_pre(fields)
    d_model = fields.get("d_model", 16)
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "parallel": parallel, "shared_norm": False,
                          "norm": "layernorm", "norm_bias": False, "n_heads": 2, "n_kv_heads": 1, "qk_norm": True,
                          "rope": True, "layer_scale": 0.5, "activation": "relu", "d_ff": 3 * d_model + 1,
                          "branch_scale": 0.75, **fields})


PRESETS = {"gpt2": gpt2, "llama": llama, "gptj": gptj, "encoder": encoder, "modern": modern, "phi": phi,
           "neox": neox, "olmo2": olmo2, "gemma3": gemma3}


# --- the two parts of an encoder-decoder, apart from PRESETS: the fixed profiles rotate each case's dtypes
# through PRESETS, so a tenth preset would move every case onto other presets (the palm revert, d089ddd); these
# run in the XB cases of their own (conformance/test_agreement.py, layer "encdec") ---

DECODER = ("attention", "cross_attention", "mlp")


def _deepnet(part: str, fields, encoder_layers: int | None, decoder_layers: int | None) -> dict:
    """DeepNet's encoder-decoder alpha (the skip, under deepnorm placement) and beta (the gain, under deepnorm
    init) for `part` of a model of N = encoder_layers and M = decoder_layers layers; the part's own count
    defaults to its stack's model depth, the other part's to the same (the original Transformer's 6 + 6)."""
    own = fields.get("model_depth") or fields.get("depth", 1)
    if part == "encoder":
        n = encoder_layers or own
        m = decoder_layers or n
    else:
        m = decoder_layers or own
        n = encoder_layers or m
    alpha, beta = deepnet_constants(part, n, m)
    layers = n if part == "encoder" else m
    return {**({"model_depth": layers} if layers != fields.get("depth", 1) else {}),
            **({"skip_scale": alpha} if fields.get("placement", "pre") == "deepnorm" else {}),
            **({"init_beta": beta} if fields.get("init") == "deepnorm" else {})}


def encdec_decoder(encoder_layers: int | None = None, decoder_layers: int | None = None, **fields) -> BlockConfig:
    """The decoder layer of an encoder-decoder (the original Transformer, BART, Whisper): causal self-attention,
    cross-attention whose keys and values come from the encoder's output (the memory), an exact-GELU MLP;
    LayerNorm and linears with biases. DeepNet's decoder constants: alpha (3M)^(1/4), beta (12M)^(-1/4)."""
    return BlockConfig(**{"sublayers": DECODER, "norm": "layernorm", "gelu": "exact",
                          **_deepnet("decoder", fields, encoder_layers, decoder_layers), **fields})


def encdec_encoder(encoder_layers: int | None = None, decoder_layers: int | None = None, **fields) -> BlockConfig:
    """The encoder of the same model: the encoder layer with DeepNet's encoder-decoder constants, alpha
    0.81 (N^4 M)^(1/16) and beta 0.87 (N^4 M)^(-1/16) (not the encoder-only (2N)^(1/4), (8N)^(-1/4))."""
    return encoder(**{**_deepnet("encoder", fields, encoder_layers, decoder_layers), **fields})


ENCODER_DECODER = {"encdec_decoder": encdec_decoder, "encdec_encoder": encdec_encoder}


def preset(name: str, **fields) -> BlockConfig:
    known = {**PRESETS, **ENCODER_DECODER}
    if name not in known:
        raise ValueError(f"unknown layer preset {name!r}; expected one of {', '.join(known)}")
    return known[name](**fields)

"""The layers people ship, as BlockConfigs: what the suite rotates through besides single-sublayer blocks.

Each preset fixes a layer's structure and features; the test fixes placement, init, depth and width.
Head counts follow the width so that every preset fits the suite's small shapes (C = 8, 16, 32).
"""
from __future__ import annotations

from resconf.backends.config import BlockConfig

TWO_SUBLAYERS = ("attention", "mlp")


def gpt2(**fields) -> BlockConfig:
    """GPT-2 / nanoGPT: LayerNorm with bias, multi-head causal attention, GELU (tanh) MLP, biased linears."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "layernorm", "activation": "gelu", "gelu": "tanh",
                          **fields})


def llama(**fields) -> BlockConfig:
    """Llama / Mistral / Qwen 2: RMSNorm, grouped-query attention with RoPE, SwiGLU, no biases."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "rmsnorm", "n_heads": 4, "n_kv_heads": 2,
                          "rope": True, "activation": "silu", "gated": True, "bias": False, **fields})


def gptj(**fields) -> BlockConfig:
    """GPT-J / PaLM: attention and MLP in parallel from one shared LayerNorm, RoPE, GELU MLP."""
    parallel = fields.get("placement", "pre") == "pre"  # a parallel layer is pre-norm by construction
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "parallel": parallel, "norm": "layernorm", "rope": True,
                          **fields})


def encoder(**fields) -> BlockConfig:
    """BERT / ViT encoder: bidirectional attention, exact GELU, LayerNorm with bias."""
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "norm": "layernorm", "causal": False, "gelu": "exact",
                          **fields})


def modern(**fields) -> BlockConfig:
    """The remaining features together: multi-query attention with QK-norm before RoPE (OLMo 2, Qwen 3),
    LayerScale, a ReLU MLP of odd width, LayerNorm without bias, two parallel norms, a constant branch scale."""
    parallel = fields.get("placement", "pre") == "pre"
    d_model = fields.get("d_model", 16)
    return BlockConfig(**{"sublayers": TWO_SUBLAYERS, "parallel": parallel, "shared_norm": False,
                          "norm": "layernorm", "norm_bias": False, "n_heads": 2, "n_kv_heads": 1, "qk_norm": True,
                          "rope": True, "layer_scale": 0.5, "activation": "relu", "d_ff": 3 * d_model + 1,
                          "branch_scale": 0.75, **fields})


PRESETS = {"gpt2": gpt2, "llama": llama, "gptj": gptj, "encoder": encoder, "modern": modern}


def preset(name: str, **fields) -> BlockConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown layer preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name](**fields)

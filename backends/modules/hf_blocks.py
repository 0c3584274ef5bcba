"""transformers' decoder layers as users run them: GPT2Model, LlamaModel, PhiModel, built from configs in
code (no download), fed the stream through `inputs_embeds`.

Each model is the real one end to end: its own causal mask (`create_causal_mask`; with SDPA and no padding
that is SDPA's is_causal), its own rotary embedding, its own final norm (replaced by nn.Identity when the
configuration has none). The attention implementation is the default users get, "sdpa" (checked when the
model is built). Models are built with `_from_config(config, dtype=...)`, as from_pretrained(dtype=...)
builds them, so buffers the code keeps in float32 (rotary inv_freq) stay there. Token and position
embeddings get zeros (GPT-2 adds wpe(0..T-1) = 0 exactly).

Placement is `pre` only: these layers have no other. Capabilities list exactly what each config maps.
float64 is not claimed for Llama and Phi: their rotary cos/sin (and LlamaRMSNorm) compute in float32 whatever
the model dtype, so a float64 model is float32 arithmetic in float64 storage (measured: ~5e-8 relative against
the oracle; LlamaRMSNorm turns |x| > 3.4e38 into NaN). tests/test_real_torch_modules.py records both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel, PhiConfig, PhiModel

from resconf.backends.base import Capabilities
from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import claims
from resconf.backends.modules.torch_real import MODES, Record, RealModuleBackend, Slot, input_to, output_to

ATTN = "sdpa"
TWO = frozenset({("attention", "mlp")})
FLOAT32_INSIDE = claims("float32", "bfloat16", "float16")  # module docstring


def gelu_name(cfg: BlockConfig) -> str:
    """ACT2FN names: gelu_new is GPT-2's and Phi's tanh GELU, gelu the exact one."""
    return "gelu_new" if cfg.gelu == "tanh" else "gelu"


class HfBackend(RealModuleBackend):
    """The shared run: model(inputs_embeds=x), its last hidden state (after the final norm)."""

    model_class: type = nn.Module
    final_norm_attr = ""
    blocks_attr = "layers"

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "transformers": transformers.__version__, "attn_implementation": ATTN}

    def config(self, cfg: BlockConfig):
        raise NotImplementedError

    def build(self, cfg: BlockConfig, dtype: torch.dtype) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the model's random init must not move the global RNG
            model = self.model_class._from_config(self.config(cfg), dtype=dtype).to(self.device)
        if model.config._attn_implementation != ATTN:
            raise RuntimeError(f"backend {self.name!r}: transformers chose attention "
                               f"{model.config._attn_implementation!r}, expected {ATTN!r}")
        if not cfg.final_norm:
            setattr(model, self.final_norm_attr, nn.Identity())
        return model

    def run(self, module: nn.Module, cfg: BlockConfig, x: torch.Tensor) -> torch.Tensor:
        return module(inputs_embeds=x, use_cache=False).last_hidden_state

    def compiled_parts(self, module: nn.Module) -> list[nn.Module]:
        final = getattr(module, self.final_norm_attr)
        return [*getattr(module, self.blocks_attr), *([] if isinstance(final, nn.Identity) else [final])]

    def final_slots(self, cfg: BlockConfig, layer: int, prefix: str, bias: bool) -> list[Slot]:
        if not (cfg.final_norm and layer == cfg.depth - 1):
            return []
        return [Slot(f"{prefix}.weight", ("final.norm_weight",))] + (
            [Slot(f"{prefix}.bias", ("final.norm_bias",))] if bias else [])


def sequential_hooks(layers, mid_norm: str, attn: str, mlp: str, record: Record) -> list:
    """Two sublayers in turn: the mid-layer state is the second norm's input, the layer's output the
    state after the MLP; the writes are the attention's and the MLP's outputs."""
    handles = []
    for layer in layers:
        part = record.part()
        handles += [getattr(layer, mid_norm).register_forward_pre_hook(input_to(part.states)),
                    getattr(layer, attn).register_forward_hook(output_to(part.writes)),
                    getattr(layer, mlp).register_forward_hook(output_to(part.writes)),
                    layer.register_forward_hook(output_to(part.states))]
    return handles


class HfGpt2Backend(HfBackend):
    """GPT2Model of GPT2Block: LayerNorm, causal MHA, GELU MLP, biased Conv1D linears (stored (in, out),
    as the suite's records), ln_f as the final norm."""

    name = "hf_gpt2"
    model_class = GPT2Model
    final_norm_attr = "ln_f"
    blocks_attr = "h"

    @property
    def capabilities(self) -> Capabilities:
        fixed = frozenset({"sublayers"})
        return Capabilities(placements=frozenset({"pre"}), norms=frozenset({"layernorm"}),
                            branches=frozenset({"attention", "mlp"}), features=fixed | {"final_norm"},
                            dtypes=claims("float64", "float32", "bfloat16", "float16"), layers=TWO, requires=fixed,
                            modes=MODES)

    def config(self, cfg: BlockConfig) -> GPT2Config:
        return GPT2Config(vocab_size=1, n_positions=1024, n_embd=cfg.d_model, n_layer=cfg.depth, n_head=cfg.n_heads,
                          n_inner=cfg.d_hidden, activation_function=gelu_name(cfg), layer_norm_epsilon=cfg.eps,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=ATTN,
                          bos_token_id=None, eos_token_id=None)

    def slots(self, cfg: BlockConfig, layer: int, p) -> list[Slot]:
        at = f"h.{layer}."
        return [Slot(at + "ln_1.weight", ("attention.norm_weight",)), Slot(at + "ln_1.bias", ("attention.norm_bias",)),
                Slot(at + "attn.c_attn.weight", ("attention.wq", "attention.wk", "attention.wv")),
                Slot(at + "attn.c_attn.bias", ("attention.bq", "attention.bk", "attention.bv")),
                Slot(at + "attn.c_proj.weight", ("attention.wo",)), Slot(at + "attn.c_proj.bias", ("attention.bo",)),
                Slot(at + "ln_2.weight", ("mlp.norm_weight",)), Slot(at + "ln_2.bias", ("mlp.norm_bias",)),
                Slot(at + "mlp.c_fc.weight", ("mlp.w_up",)), Slot(at + "mlp.c_fc.bias", ("mlp.b_up",)),
                Slot(at + "mlp.c_proj.weight", ("mlp.w_down",)), Slot(at + "mlp.c_proj.bias", ("mlp.b_down",)),
                *self.final_slots(cfg, layer, "ln_f", True)]

    def watch(self, module: GPT2Model, cfg: BlockConfig, record: Record) -> list:
        return sequential_hooks(module.h, "ln_2", "attn", "mlp", record)


class HfLlamaBackend(HfBackend):
    """LlamaModel of LlamaDecoderLayer: RMSNorm, GQA with half-split RoPE (rope_theta = rope_base), SwiGLU;
    attention_bias and mlp_bias give the biased form; LlamaModel.norm as the final norm."""

    name = "hf_llama"
    model_class = LlamaModel
    final_norm_attr = "norm"

    @property
    def capabilities(self) -> Capabilities:
        fixed = frozenset({"sublayers", "gated", "rope"})
        return Capabilities(placements=frozenset({"pre"}), norms=frozenset({"rmsnorm"}),
                            branches=frozenset({"attention", "mlp"}),
                            features=fixed | {"final_norm", "silu", "gqa", "no_bias"},
                            dtypes=FLOAT32_INSIDE, layers=TWO, requires=fixed, modes=MODES)

    def config(self, cfg: BlockConfig) -> LlamaConfig:
        act = "silu" if cfg.activation == "silu" else gelu_name(cfg)  # gelu: GeGLU through the same MLP
        return LlamaConfig(vocab_size=1, hidden_size=cfg.d_model, intermediate_size=cfg.d_hidden,
                           num_hidden_layers=cfg.depth, num_attention_heads=cfg.n_heads,
                           num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, hidden_act=act,
                           max_position_embeddings=1024, rms_norm_eps=cfg.eps, attention_bias=cfg.bias,
                           mlp_bias=cfg.bias, attention_dropout=0.0, attn_implementation=ATTN,
                           rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                           bos_token_id=None, eos_token_id=None, pad_token_id=None)

    def slots(self, cfg: BlockConfig, layer: int, p) -> list[Slot]:
        at = f"layers.{layer}."
        linears = {"self_attn.q_proj": "attention.{}q", "self_attn.k_proj": "attention.{}k",
                   "self_attn.v_proj": "attention.{}v", "self_attn.o_proj": "attention.{}o",
                   "mlp.gate_proj": "mlp.{}_gate", "mlp.up_proj": "mlp.{}_up", "mlp.down_proj": "mlp.{}_down"}
        out = [Slot(at + "input_layernorm.weight", ("attention.norm_weight",)),
               Slot(at + "post_attention_layernorm.weight", ("mlp.norm_weight",))]
        for path, name in linears.items():
            out.append(Slot(f"{at}{path}.weight", (name.format("w"),), True))
            if cfg.bias:
                out.append(Slot(f"{at}{path}.bias", (name.format("b"),)))
        return out + self.final_slots(cfg, layer, "norm", False)

    def watch(self, module: LlamaModel, cfg: BlockConfig, record: Record) -> list:
        return sequential_hooks(module.layers, "post_attention_layernorm", "self_attn", "mlp", record)


@dataclass(frozen=True)
class SharedNormCapabilities(Capabilities):
    def why_not(self, cfg: BlockConfig) -> str | None:
        if cfg.parallel and not cfg.shared_norm:
            return "has one LayerNorm shared by attention and MLP (input_layernorm), not one each"
        return super().why_not(cfg)


class HfPhiBackend(HfBackend):
    """PhiModel of PhiDecoderLayer: x + attn(ln(x)) + mlp(ln(x)), one shared LayerNorm, biased linears,
    RoPE over the whole head (partial_rotary_factor=1.0, half-split), GELU MLP; final_layernorm. Our
    `phi` preset (GPT-J itself rotates a quarter of each head, interleaved, and has no attention biases)."""

    name = "hf_phi"
    model_class = PhiModel
    final_norm_attr = "final_layernorm"

    @property
    def capabilities(self) -> Capabilities:
        fixed = frozenset({"parallel", "rope"})
        return SharedNormCapabilities(placements=frozenset({"pre"}), norms=frozenset({"layernorm"}),
                                      branches=frozenset({"attention", "mlp"}), features=fixed | {"final_norm", "gqa"},
                                      dtypes=FLOAT32_INSIDE, layers=TWO, requires=fixed, modes=MODES)

    def config(self, cfg: BlockConfig) -> PhiConfig:
        return PhiConfig(vocab_size=1, hidden_size=cfg.d_model, intermediate_size=cfg.d_hidden,
                         num_hidden_layers=cfg.depth, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.kv_heads, hidden_act=gelu_name(cfg), max_position_embeddings=1024,
                         layer_norm_eps=cfg.eps, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                         qk_layernorm=False, attn_implementation=ATTN,
                         rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base,
                                          "partial_rotary_factor": 1.0},
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)

    def slots(self, cfg: BlockConfig, layer: int, p) -> list[Slot]:
        at = f"layers.{layer}."
        linears = {"self_attn.q_proj": ("attention.wq", "attention.bq"),
                   "self_attn.k_proj": ("attention.wk", "attention.bk"),
                   "self_attn.v_proj": ("attention.wv", "attention.bv"),
                   "self_attn.dense": ("attention.wo", "attention.bo"),
                   "mlp.fc1": ("mlp.w_up", "mlp.b_up"), "mlp.fc2": ("mlp.w_down", "mlp.b_down")}
        out = [Slot(at + "input_layernorm.weight", ("attention.norm_weight",)),
               Slot(at + "input_layernorm.bias", ("attention.norm_bias",))]
        for path, (w, b) in linears.items():
            out += [Slot(f"{at}{path}.weight", (w,), True), Slot(f"{at}{path}.bias", (b,))]
        return out + self.final_slots(cfg, layer, "final_layernorm", True)

    def watch(self, module: PhiModel, cfg: BlockConfig, record: Record) -> list:
        """resid_dropout (p = 0) runs twice per layer, on the attention's output then the MLP's; the write is
        their sum, added in the layer's own order and dtype (attn + mlp, then + residual)."""
        def write(part: Record):
            pending: list[torch.Tensor] = []

            def hook(m, args, out):
                pending.append(out)
                if len(pending) == 2:
                    part.writes.append(pending.pop(0) + pending.pop(0))
            return hook

        handles = []
        for layer in module.layers:
            part = record.part()
            handles += [layer.resid_dropout.register_forward_hook(write(part)),
                        layer.register_forward_hook(output_to(part.states))]
        return handles

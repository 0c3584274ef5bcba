"""`torch_nn`: torch.nn.TransformerEncoderLayer, stacked by nn.TransformerEncoder, as users build it.

TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0, activation, layer_norm_eps,
batch_first=True, norm_first, bias): an attention sublayer then an MLP sublayer, each with its LayerNorm;
norm_first=True is placement `pre`, False is `post`. Causal attention is the documented call,
`mask=nn.Transformer.generate_square_subsequent_mask(T)` with `is_causal=True`.

nn.TransformerEncoder, not a ModuleList: it is what users stack the layer with, it owns the final norm
(`norm=`), and its forward is the one that detects the causal mask and picks the layer's path.

Which path is checked. In eval mode with autograd off, the layer runs its inference "fast path"
(torch._transformer_encoder_layer_fwd, one fused op per layer) unless any forward hook is attached to it
or its submodules. `TorchNnBackend` reads its trace with hooks, so it checks the standard path (the one
training, and every hooked model, runs; its VJP is autograd's, necessarily the standard path).
`TorchNnFastPathBackend` checks the fast path: the stream state after each layer (so x_U and the final
norm) comes from the unhooked fast path, and only what the fused op cannot show (the mid-layer state and
the two writes) from the standard path on the same layer input.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from resconf.backends.base import Capabilities
from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import claims
from resconf.backends.modules.torch_real import MODES, Record, RealModuleBackend, Slot, input_to, output_to

FIXED = frozenset({"sublayers"})  # always attention then mlp, never one sublayer alone


@dataclass(frozen=True)
class EncoderCapabilities(Capabilities):
    """`bias=` switches the linears' and the LayerNorms' biases together: one without the other is not
    this module."""

    def why_not(self, cfg: BlockConfig) -> str | None:
        if cfg.bias != cfg.has_norm_bias:
            return "has one bias= switch for linears and LayerNorms: cannot set bias and norm_bias apart"
        return super().why_not(cfg)


def activation(cfg: BlockConfig):
    """What a user passes: the string for ReLU and exact GELU, an nn.GELU module for the tanh form."""
    if cfg.activation == "relu":
        return "relu"
    return "gelu" if cfg.gelu == "exact" else nn.GELU(approximate="tanh")


class TorchNnBackend(RealModuleBackend):
    """nn.TransformerEncoder of nn.TransformerEncoderLayer, standard path (module docstring)."""

    name = "torch_nn"

    @property
    def capabilities(self) -> Capabilities:
        # measured on torch 2.13 CPU: forward and backward run in all four dtypes
        return EncoderCapabilities(placements=frozenset({"pre", "post"}), norms=frozenset({"layernorm"}),
                                   branches=frozenset({"attention", "mlp"}),
                                   features=FIXED | {"final_norm", "relu", "no_bias", "no_norm_bias", "bidirectional"},
                                   dtypes=claims("float64", "float32", "bfloat16", "float16"),
                                   layers=frozenset({("attention", "mlp")}), requires=FIXED, modes=MODES)

    def build(self, cfg: BlockConfig, dtype: torch.dtype) -> nn.TransformerEncoder:
        kw = dict(device=self.device, dtype=dtype)
        with torch.random.fork_rng(devices=[]):  # the module's own random init must not move the global RNG
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_hidden, dropout=0.0,
                                               activation=activation(cfg), layer_norm_eps=cfg.eps, batch_first=True,
                                               norm_first=cfg.placement == "pre", bias=cfg.bias, **kw)
            final = nn.LayerNorm(cfg.d_model, eps=cfg.eps, bias=cfg.bias, **kw) if cfg.final_norm else None
            return nn.TransformerEncoder(layer, cfg.depth, norm=final, enable_nested_tensor=False)

    def slots(self, cfg: BlockConfig, layer: int, p) -> list[Slot]:
        at, b = f"layers.{layer}.", cfg.bias
        out = [Slot(at + "self_attn.in_proj_weight", ("attention.wq", "attention.wk", "attention.wv"), True),
               Slot(at + "self_attn.out_proj.weight", ("attention.wo",), True),
               Slot(at + "linear1.weight", ("mlp.w_up",), True), Slot(at + "linear2.weight", ("mlp.w_down",), True),
               Slot(at + "norm1.weight", ("attention.norm_weight",)), Slot(at + "norm2.weight", ("mlp.norm_weight",))]
        if b:
            out += [Slot(at + "self_attn.in_proj_bias", ("attention.bq", "attention.bk", "attention.bv")),
                    Slot(at + "self_attn.out_proj.bias", ("attention.bo",)), Slot(at + "linear1.bias", ("mlp.b_up",)),
                    Slot(at + "linear2.bias", ("mlp.b_down",)), Slot(at + "norm1.bias", ("attention.norm_bias",)),
                    Slot(at + "norm2.bias", ("mlp.norm_bias",))]
        if cfg.final_norm and layer == cfg.depth - 1:
            out += [Slot("norm.weight", ("final.norm_weight",))]
            out += [Slot("norm.bias", ("final.norm_bias",))] if b else []
        return out

    def watch(self, module: nn.TransformerEncoder, cfg: BlockConfig, record: Record) -> list:
        """The writes are dropout1's and dropout2's outputs (p = 0: the branches themselves). The mid-layer
        state is norm2's input (pre: x + attn) or norm1's output (post: N(x + attn)); the layer's output is
        the state after the MLP sublayer."""
        handles = []
        for layer in module.layers:
            part = record.part()
            if cfg.placement == "pre":
                handles.append(layer.norm2.register_forward_pre_hook(input_to(part.states)))
            else:
                handles.append(layer.norm1.register_forward_hook(output_to(part.states)))
            handles += [layer.dropout1.register_forward_hook(output_to(part.writes)),
                        layer.dropout2.register_forward_hook(output_to(part.writes)),
                        layer.register_forward_hook(output_to(part.states))]
        return handles

    def compiled_parts(self, module: nn.TransformerEncoder) -> list[nn.Module]:
        return [*module.layers, *([] if module.norm is None else [module.norm])]

    def run(self, module: nn.TransformerEncoder, cfg: BlockConfig, x: torch.Tensor) -> torch.Tensor:
        return module(x, **self.mask(cfg, x))

    @staticmethod
    def mask(cfg: BlockConfig, x: torch.Tensor) -> dict:
        """The documented causal call; bidirectional attention has no mask at all."""
        if not cfg.causal:
            return {}
        T = x.shape[1]
        return {"mask": nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=x.dtype),
                "is_causal": True}


class TorchNnFastPathBackend(TorchNnBackend):
    """The inference fast path users get in eval mode under torch.no_grad (module docstring). The VJP is
    the standard path's: autograd never takes the fast path."""

    name = "torch_nn_fast"

    @property
    def capabilities(self) -> Capabilities:
        # eager only: what the fused fast-path op does under autocast or compile is not checked here
        return dataclasses.replace(super().capabilities, modes=frozenset({"eager"}))

    def _stack_forward(self, cfg, params, x, dtype):
        module, x0 = self._prepare(cfg, params, x, dtype)
        kw = self.mask(cfg, x0)
        mask, causal = kw.get("mask"), kw.get("is_causal", False)
        record, h = Record(), x0
        with torch.no_grad():
            for layer in module.layers:
                seen = Record()  # the standard path, hooked, for the mid-layer state and the writes
                handles = self.watch(_One(layer), cfg, seen)
                try:
                    layer(h, src_mask=mask, is_causal=causal)
                finally:
                    for handle in handles:
                        handle.remove()
                h = layer(h, src_mask=mask, is_causal=causal)  # unhooked: the fast path where it applies
                states, writes = seen.seen()
                record.states += [states[0], h]
                record.writes += writes
            out = module.norm(h) if module.norm is not None else h
        return self._trace(cfg, x0, record, out)


class _One:
    """One layer posing as an encoder, so that `watch` hooks just it."""

    def __init__(self, layer: nn.Module) -> None:
        self.layers = [layer]

"""The residual block as idiomatic eager PyTorch modules (nanoGPT's model.py style).

Kept apart from the adapter (torch_backend.py) so it reads as a model would: `x = x + branch(norm(x))`.
Also here: the unfused add+norm composition that fused kernels replace (the torch backends' fused ops).
Modules are built from the suite's BlockParams (w of shape (in, out); nn.Linear keeps (out, in), so the
weight is transposed on the way in and its gradient on the way out).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resconf.backends.config import BlockConfig
from resconf.backends.params import BlockParams


class MLP(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_hidden)
        self.c_proj = nn.Linear(cfg.d_hidden, cfg.d_model)
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # packed [q | k | v]
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.n_head = cfg.n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale defaults to 1/sqrt(hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class LinearBranch(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(x)


BRANCH_MODULES = {"mlp": MLP, "attention": CausalSelfAttention, "linear": LinearBranch}
IN_LAYER = {"mlp": "c_fc", "attention": "c_attn"}  # the branch's first Linear (w_in, b_in)


class Block(nn.Module):
    """One residual block; forward returns the next stream state and the branch output F (the suite
    records both). The norm exists in every placement, so parameters line up with BlockParams, but
    rezero and plain never call it (its gradient is then zero)."""

    def __init__(self, cfg: BlockConfig, with_norm_bias: bool = True) -> None:
        super().__init__()
        C = cfg.d_model
        if cfg.norm == "layernorm":
            self.norm = nn.LayerNorm(C, eps=cfg.eps, bias=with_norm_bias)
        else:
            self.norm = nn.RMSNorm(C, eps=cfg.eps)
        self.branch = BRANCH_MODULES[cfg.branch](cfg)
        self.gate = nn.Parameter(torch.ones(())) if cfg.placement == "rezero" else None
        self.placement = cfg.placement
        self.alpha = cfg.deepnorm_alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.placement == "pre":
            f = self.branch(self.norm(x))  # (B, T, C)
            return x + f, f
        f = self.branch(x)  # (B, T, C): every other placement feeds the raw stream to the branch
        if self.placement == "post":
            return self.norm(x + f), f
        if self.placement == "rezero":
            return x + self.gate * f, f
        if self.placement == "deepnorm":
            return self.norm(self.alpha * x + f), f
        return f, f  # plain: no skip


def _param_names(cfg: BlockConfig) -> dict[str, tuple[str, bool]]:
    """BlockParams field -> (module parameter name, stored transposed?)."""
    names = {"norm_weight": ("norm.weight", False), "norm_bias": ("norm.bias", False),
             "w_out": ("branch.c_proj.weight", True), "b_out": ("branch.c_proj.bias", False),
             "gate": ("gate", False)}
    if cfg.branch in IN_LAYER:
        names["w_in"] = (f"branch.{IN_LAYER[cfg.branch]}.weight", True)
        names["b_in"] = (f"branch.{IN_LAYER[cfg.branch]}.bias", False)
    return names


def build_block(cfg: BlockConfig, p: BlockParams, dtype: torch.dtype, device: str) -> Block:
    """A Block whose parameters are exactly the tensors of p, cast to dtype on device (requiring grad).

    Built on the meta device and then loaded with assign=True, so no random init runs (the global RNG is
    untouched) and nothing is copied twice; every module parameter must come from p, which also catches
    missing or misshapen tensors, named in the suite's terms.
    """
    with torch.device("meta"):
        block = Block(cfg, with_norm_bias=p.norm_bias is not None)
    shapes = {name: tuple(t.shape) for name, t in block.named_parameters()}
    names = _param_names(cfg)
    state = {}
    for field, value in p.items():
        name, transposed = names.get(field, (field, False))
        if name not in shapes:
            raise ValueError(f"parameter {field} (shape {tuple(value.shape)}) is not used by {cfg.describe()}; "
                             f"set it to None")
        want = shapes[name][::-1] if transposed else shapes[name]
        if tuple(value.shape) != want:
            raise ValueError(f"parameter {field} has shape {tuple(value.shape)}, expected {want} for {cfg.describe()}")
        t = torch.as_tensor(value, dtype=torch.float64, device=device).to(dtype)  # exact: values are representable
        state[name] = t.T.contiguous() if transposed else t
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise ValueError(f"BlockParams lacks tensors for {missing} needed by {cfg.describe()}")
    block.load_state_dict(state, strict=True, assign=True)
    return block


def grads_as_params(cfg: BlockConfig, template: BlockParams, grads: dict[str, torch.Tensor | None]) -> BlockParams:
    """Map per-module-parameter gradients (None where unused) back into BlockParams layout, float64."""
    names = _param_names(cfg)

    def grad_of(field: str, value):
        name, transposed = names[field]
        g = grads[name]
        if g is None:  # the parameter never reached the output (the norm of a rezero or plain block)
            return torch.zeros(tuple(value.shape), dtype=torch.float64).numpy()
        return (g.T if transposed else g).detach().to("cpu", torch.float64).numpy()

    return dataclasses.replace(template, **{field: grad_of(field, v) for field, v in template.items()})


class Stack(nn.Module):
    """L blocks in sequence; forward returns every stream state x_0..x_L and every branch output."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        states, branches = [x], []
        for block in self.blocks:
            x, f = block(x)  # e.g. pre: x = x + branch(norm(x))
            states.append(x)
            branches.append(f)
        return states, branches


def build_stack(cfg: BlockConfig, params: Sequence[BlockParams], dtype: torch.dtype, device: str) -> Stack:
    return Stack([build_block(cfg, p, dtype, device) for p in params])


# --- add + norm, unfused: what a fused kernel replaces ---

def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 eps: float, residual_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused composition a fused kernel replaces: the sum rounded once to residual_dtype, normalised
    (residual arrives in the wider of x's dtype and residual_dtype, which is where the norm computes),
    out in x's dtype. Returns (out, new_residual)."""
    new_residual = (x.to(residual.dtype) + residual).to(residual_dtype)  # (..., C)
    s = new_residual.to(residual.dtype)  # a no-op except for float64 x with a float32 residual
    h = F.rms_norm(s, weight.shape, weight.to(s.dtype), eps)
    if bias is not None:
        h = h + bias.to(s.dtype)
    return h.to(x.dtype), new_residual


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float, residual_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """As add_rms_norm, with LayerNorm (separate functions so torch.compile caches each on its own code)."""
    new_residual = (x.to(residual.dtype) + residual).to(residual_dtype)
    s = new_residual.to(residual.dtype)
    h = F.layer_norm(s, weight.shape, weight.to(s.dtype), None if bias is None else bias.to(s.dtype), eps)
    return h.to(x.dtype), new_residual


ADD_NORMS = {"rmsnorm": add_rms_norm, "layernorm": add_layer_norm}

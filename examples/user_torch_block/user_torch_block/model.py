"""The user's own model code: a small Pre-LN transformer MLP block, written with no thought of resconf.

It stands for the module a framework or model author already has; the adapter (adapter.py) maps the
suite's parameters into it and asks autograd for the gradients, without changing a line here.
"""
from __future__ import annotations

import torch
from torch import nn


class MyPreLNBlock(nn.Module):
    """x + proj(gelu(fc(ln(x)))): a Pre-LN residual block with an MLP branch."""

    def __init__(self, d_model: int, d_hidden: int, norm: str = "layernorm", eps: float = 1e-5,
                 gelu: str = "tanh") -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model, eps=eps) if norm == "layernorm" else nn.RMSNorm(d_model, eps=eps)
        self.fc = nn.Linear(d_model, d_hidden)
        self.act = nn.GELU(approximate=gelu)  # "tanh" or "none" (the exact erf form)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return x + self.proj(self.act(self.fc(self.ln(x))))

"""What a residual block is: the configuration every backend must be able to express (SPEC.md).

A block computes, for an input stream x of shape (B, T, C):
    pre       x + F(N(x))
    post      N(x + F(x))
    rezero    x + a * F(x)          (a is a learnable scalar, the block's `gate`)
    deepnorm  N(alpha * x + F(x))   alpha = (2L) ** (1/4)
    plain     F(x)                  (no skip: the control that must FAIL identity properties)
"""
from __future__ import annotations

from dataclasses import dataclass

PLACEMENTS = ("pre", "post", "rezero", "deepnorm", "plain")
NORMS = ("layernorm", "rmsnorm")
BRANCHES = ("mlp", "attention", "linear")
INITS = ("standard", "gpt2", "zero", "rezero", "deepnorm")
GELUS = ("tanh", "exact")
DTYPES = ("float64", "float32", "bfloat16", "float16")
FUSED_KINDS = ("rmsnorm", "layernorm")


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {choices}")


@dataclass(frozen=True)
class BlockConfig:
    """One residual block, repeated `depth` times to make a stack (depth = L in the formulas)."""

    placement: str = "pre"
    norm: str = "layernorm"
    branch: str = "mlp"
    init: str = "standard"
    depth: int = 1
    d_model: int = 16
    n_heads: int = 2
    mlp_ratio: int = 4
    gelu: str = "tanh"
    eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_choice("placement", self.placement, PLACEMENTS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("branch", self.branch, BRANCHES)
        _check_choice("init", self.init, INITS)
        _check_choice("gelu", self.gelu, GELUS)
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be >= 1")
        if self.d_model < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a positive multiple of n_heads={self.n_heads}")
        if not self.eps > 0:
            raise ValueError(f"eps={self.eps} must be > 0")

    @property
    def d_hidden(self) -> int:
        return self.mlp_ratio * self.d_model

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNet's skip scale for an encoder of L blocks: (2L)^(1/4)."""
        return (2.0 * self.depth) ** 0.25

    @property
    def deepnorm_beta(self) -> float:
        """DeepNet's init gain on FFN, value and output projections: (8L)^(-1/4)."""
        return (8.0 * self.depth) ** -0.25

    def describe(self) -> str:
        """Stable short text used in result rows and rerun lines."""
        return (f"placement={self.placement},norm={self.norm},branch={self.branch},init={self.init},"
                f"depth={self.depth},d_model={self.d_model},gelu={self.gelu},eps={self.eps:g}")

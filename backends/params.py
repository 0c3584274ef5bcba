"""Parameters of a block, drawn once by the suite (NumPy, seeded) and handed to every backend.

Linear layers are stored as y = x @ w + b with w of shape (in, out); a backend whose framework keeps
(out, in) transposes. Which tensors a block has depends on its branch:
    mlp        w_in (C, H), b_in (H,), w_out (H, C), b_out (C,)
    attention  w_in (C, 3C) packed [q | k | v], b_in (3C,), w_out (C, C), b_out (C,)
    linear     w_out (C, C), b_out (C,)            (its one Linear is the output projection)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from resconf.backends.config import BlockConfig

BASE_STD = 0.02  # GPT-2 / nanoGPT's std for every weight


@dataclass(frozen=True)
class BlockParams:
    norm_weight: np.ndarray  # (C,)
    norm_bias: np.ndarray | None  # (C,); None for rmsnorm
    w_in: np.ndarray | None
    b_in: np.ndarray | None
    w_out: np.ndarray
    b_out: np.ndarray
    gate: np.ndarray | None  # () ReZero's a; None unless placement == "rezero"

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, tensor) for every tensor present, in a fixed order."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                yield field.name, value

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "BlockParams":
        """The same structure with fn applied to every present tensor."""
        return dataclasses.replace(self, **{name: fn(t) for name, t in self.items()})


def draw_params(cfg: BlockConfig, seed: int, perturb: bool = False) -> tuple[BlockParams, ...]:
    """One BlockParams per block of a depth-`cfg.depth` stack, following the init scheme `cfg.init`.

    perturb=True adds small noise to norm gains and every bias, so that a backend which ignores one
    of them cannot agree with the reference by accident (the schemes themselves zero all biases).
    """
    rng = np.random.default_rng(seed)
    return tuple(_draw_block(cfg, rng, perturb) for _ in range(cfg.depth))


def _draw_block(cfg: BlockConfig, rng: np.random.Generator, perturb: bool) -> BlockParams:
    C, H = cfg.d_model, cfg.d_hidden
    n_in, n_out = {"mlp": ((C, H), (H, C)), "attention": ((C, 3 * C), (C, C)), "linear": (None, (C, C))}[cfg.branch]
    w_in = None if n_in is None else _weight(rng, n_in, cfg, is_output=False)
    w_out = _weight(rng, n_out, cfg, is_output=True)
    b_in = None if n_in is None else np.zeros(n_in[1])
    b_out = np.zeros(C)
    norm_weight = np.ones(C)
    norm_bias = np.zeros(C) if cfg.norm == "layernorm" else None
    gate = None
    if cfg.placement == "rezero":
        gate = np.array(0.0 if cfg.init == "rezero" else 1.0)
    if perturb:
        norm_weight = norm_weight + rng.normal(0.0, 0.1, C)
        norm_bias = None if norm_bias is None else rng.normal(0.0, 0.1, C)
        b_in = None if b_in is None else rng.normal(0.0, BASE_STD, b_in.shape)
        if cfg.init != "zero":
            b_out = rng.normal(0.0, BASE_STD, C)
    return BlockParams(norm_weight, norm_bias, w_in, b_in, w_out, b_out, gate)


def _weight(rng: np.random.Generator, shape: tuple[int, int], cfg: BlockConfig, is_output: bool) -> np.ndarray:
    if cfg.init == "zero" and is_output:
        return np.zeros(shape)
    if cfg.init == "deepnorm":
        return _deepnorm_weight(rng, shape, cfg, is_output)
    std = BASE_STD
    if cfg.init == "gpt2" and is_output:
        std = BASE_STD / np.sqrt(2.0 * cfg.depth)  # GPT-2: residual writes scaled by 1/sqrt(number of writes)
    return rng.normal(0.0, std, shape)


def _deepnorm_weight(rng: np.random.Generator, shape: tuple[int, int], cfg: BlockConfig, is_output: bool) -> np.ndarray:
    """DeepNet: Xavier-normal, with gain beta on FFN, value and output projections (not on q, k)."""
    fan_in, fan_out = shape
    if cfg.branch == "attention" and not is_output:
        fan_out = fan_out // 3  # q, k, v are three (C, C) projections packed side by side
    w = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)
    if cfg.branch == "attention" and not is_output:
        w[:, 2 * cfg.d_model:] *= cfg.deepnorm_beta  # only the value part
    else:
        w *= cfg.deepnorm_beta
    return w


def expected_std(cfg: BlockConfig, name: str) -> float:
    """The std the scheme prescribes for weight `name` (for checking a backend's own initializer)."""
    if cfg.init == "zero" and name == "w_out":
        return 0.0
    if cfg.init == "gpt2" and name == "w_out":
        return BASE_STD / np.sqrt(2.0 * cfg.depth)
    return BASE_STD

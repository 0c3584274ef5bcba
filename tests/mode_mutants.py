"""Backends broken only in one execution mode (backends/modes.py): the torch backend with one layer class
swapped for a broken one, which only the cases in that mode can catch. Each is named in conformance/catalogue.py
and run by tests/test_mutants.py in its mode (MODES) on its cases (SELECTION)."""
from __future__ import annotations

import torch

from resconf.backends.torch.backend import TorchBackend
from resconf.backends.torch.blocks import Layer
from resconf.conformance import catalogue


class _SkipDroppedWhenCompiling(Layer):
    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) if torch.compiler.is_compiling() else super().scaled(x)


class _StreamInBfloat16(Layer):
    def pre(self, kinds, x):
        y, w = super().pre(kinds, x)
        return y.to(torch.bfloat16).to(y.dtype), w

    def update(self, sub, x):
        y, w = super().update(sub, x)
        return y.to(torch.bfloat16).to(y.dtype), w


class _LayerMutant(TorchBackend):
    broken: type[Layer] = Layer
    modes: tuple[str, ...] = ()  # where it swaps its layers in; elsewhere it is the torch backend

    def _build(self, cfg, params, dtype):
        stack = super()._build(cfg, params, dtype)
        if self.mode in self.modes:
            for layer in stack.layers:
                layer.__class__ = self.broken  # same state, one method broken
        return stack


class DropsResidualWhenCompiling(_LayerMutant):
    """Drops the skip path only while torch.compile traces it (torch.compiler.is_compiling()): eager is right."""

    broken, modes = _SkipDroppedWhenCompiling, ("compile",)


class RoundsStreamToBfloat16(_LayerMutant):
    """Under fp32_residual (and autocast) rounds the float32 residual stream to bfloat16 after every update,
    where the policy keeps it in float32."""

    broken, modes = _StreamInBfloat16, ("fp32_residual", "autocast")


MUTANTS = (DropsResidualWhenCompiling, RoundsStreamToBfloat16)
EXPECTED = catalogue.caught_by(MUTANTS)
MODES = {DropsResidualWhenCompiling: "compile", RoundsStreamToBfloat16: "fp32_residual"}
SELECTION = {DropsResidualWhenCompiling: "(test_identity_block or test_forward_matches_oracle) and float32 and block",
             RoundsStreamToBfloat16: "(test_forward_matches_oracle or test_vjp_matches_oracle "
                                     "or test_stream_is_sum_of_writes) and float32"}
for _mutant in MUTANTS:
    _mutant.name = _mutant.__name__

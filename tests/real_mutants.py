"""Wrong and honest claims about a real module, for tests/test_real_torch_modules.py to run the suite on
(`--backend tests.real_mutants:PostLnClaimedPre`).

The module is the real torch.nn.TransformerEncoderLayer in both; only the claim differs."""
from __future__ import annotations

import dataclasses

from resconf.backends.base import Capabilities
from resconf.backends.modules.torch_nn import TorchNnBackend


def _only(caps: Capabilities, placement: str) -> Capabilities:
    return dataclasses.replace(caps, placements=frozenset({placement}))


class PostLnClaimedPre(TorchNnBackend):
    """TransformerEncoderLayer(norm_first=False), a Post-LN layer, claimed as placement pre."""

    name = "post_ln_claimed_pre"

    @property
    def capabilities(self) -> Capabilities:
        return _only(super().capabilities, "pre")

    def build(self, cfg, dtype):
        return super().build(dataclasses.replace(cfg, placement="post"), dtype)  # norm_first=False, always


class PostLnHonest(TorchNnBackend):
    """The same Post-LN layer claimed as what it is: placement post only."""

    name = "post_ln_honest"

    @property
    def capabilities(self) -> Capabilities:
        return _only(super().capabilities, "post")

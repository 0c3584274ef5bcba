"""Skip, never fail, what a backend does not claim; the skip reason lands in the results row."""
from __future__ import annotations

import pytest

from resconf.backends.base import Backend
from resconf.backends.config import BlockConfig
from resconf.backends.modes import MODES
from resconf.conformance.catalogue import FUSED


def require_placement(backend: Backend, *placements: str) -> None:
    caps = backend.capabilities
    if not caps.blocks:
        pytest.skip(f"{backend.name} offers no residual blocks (fused add+norm only)")
    missing = [p for p in placements if p not in caps.placements]
    if missing:
        pytest.skip(f"{backend.name} does not claim placement {', '.join(missing)}")


def require_branch(backend: Backend, branch: str, norm: str | None = None) -> None:
    caps = backend.capabilities
    if branch not in caps.branches or (norm is not None and norm not in caps.norms):
        pytest.skip(f"{backend.name} does not claim branch {branch}" + (f" with norm {norm}" if norm else ""))


def require_cpu(backend: Backend) -> None:
    if backend.device != "cpu":
        pytest.skip("determinism is required on the CPU only (GPU reductions may use atomics)")


def require_fused(backend: Backend, kind: str) -> None:
    if kind not in backend.capabilities.fused_kinds:
        pytest.skip(f"{backend.name} does not claim fused add+{kind}")
    mode = MODES[backend.mode]
    if FUSED not in mode.domains:  # a property over blocks and fused ops runs its block cases in the mode
        pytest.skip(f"mode {mode.name} is not applied to fused add+norm (it applies to {', '.join(mode.domains)})")


def require_config(backend: Backend, cfg: BlockConfig) -> None:
    """The backend claims everything cfg needs: placement, norm, every sublayer and every layer feature."""
    require_placement(backend, cfg.placement)
    reason = backend.capabilities.why_not(cfg)
    if reason is not None:
        pytest.skip(f"{backend.name} {reason} (needed by {cfg.describe()})")

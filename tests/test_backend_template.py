"""Backend is a validating template: a subclass that only writes the hooks gets the claim and shape checks of
its public methods for free, each a one-line error naming what was wrong and what was expected."""
from __future__ import annotations

import numpy as np
import pytest

from resconf.backends import Backend, BlockConfig, Capabilities, draw_params
from resconf.backends.base import StackTrace
from resconf.backends.dtypes import claims


class HooksOnly(Backend):
    """Identity blocks and a plain add+norm, with no checks of its own; records what reached the hooks."""

    name = "hooks_only"

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self.calls: list[str] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(placements=frozenset({"pre"}), dtypes=claims("float32"), fused_kinds=frozenset({"rmsnorm"}))

    def _stack_forward(self, cfg, params, x, dtype):
        self.calls.append("_stack_forward")
        return StackTrace(states=np.stack([x, x]), writes=np.zeros((1, *x.shape)))

    def _fused_add_norm(self, x, residual, weight, bias, eps, kind, dtype, residual_in_fp32=False):
        self.calls.append("_fused_add_norm")
        s = x + residual  # broadcasts: only the template stands between it and a (1, C) residual
        return s * weight, s


CFG = BlockConfig(placement="pre", norm="layernorm", sublayers=("mlp",), d_model=8, depth=1)


def _forward(backend, x, dtype="float32", cfg=CFG):
    return backend.stack_forward(cfg, draw_params(cfg, 0), x, dtype)


def _fused(backend, x, residual, weight, kind="rmsnorm", dtype="float32", eps=1e-5, bias=None):
    return backend.fused_add_norm(x, residual, weight, bias, eps, kind, dtype)


@pytest.mark.parametrize("call, message", [
    (lambda b: _forward(b, np.zeros((2, 3, 8)), dtype="float16"),
     r"does not claim dtype 'float16'; it claims \['float32'\]"),
    (lambda b: _forward(b, np.zeros((2, 3, 4))), r"x has shape \(2, 3, 4\); expected \(B, T, 8\) for d_model=8"),
    (lambda b: _forward(b, np.zeros((3, 8))), r"x has shape \(3, 8\); expected \(B, T, 8\)"),
    (lambda b: _forward(b, np.zeros((2, 3, 8)), cfg=BlockConfig(placement="post", norm="layernorm",
                                                                  sublayers=("mlp",), d_model=8, depth=1)),
     r"does not claim post: cannot run"),
    (lambda b: b.stack_vjp(CFG, draw_params(CFG, 0), np.zeros((2, 3, 8)), np.zeros((1, 3, 8)), "float32"),
     r"g has shape \(1, 3, 8\) but x has shape \(2, 3, 8\); expected the same shape"),
    (lambda b: _fused(b, np.zeros((6, 16)), np.zeros((1, 16)), np.ones(16)),
     r"residual has shape \(1, 16\) but x has shape \(6, 16\); expected the same shape \(no broadcasting\)"),
    (lambda b: _fused(b, np.zeros((6, 16)), np.zeros((6, 16)), np.ones(17)),
     r"weight has shape \(17,\) but x has shape \(6, 16\); expected \(16,\)"),
    (lambda b: _fused(b, np.zeros((6, 16)), np.zeros((6, 16)), np.ones(16), bias=np.zeros(3)),
     r"bias has shape \(3,\) but x has shape \(6, 16\); expected \(16,\)"),
    (lambda b: _fused(b, np.zeros((6, 16)), np.zeros((6, 16)), np.ones(16), kind="layernorm"),
     r"does not claim fused kind 'layernorm'; it claims \['rmsnorm'\]"),
    (lambda b: _fused(b, np.zeros((6, 16)), np.zeros((6, 16)), np.ones(16), dtype="bfloat16"),
     r"does not claim dtype 'bfloat16'"),
    (lambda b: _fused(b, np.zeros((6, 16)), np.zeros((6, 16)), np.ones(16), eps=0.0),
     r"eps=0.0; expected eps > 0"),
    (lambda b: b.fused_add_norm_vjp(np.zeros((6, 16)), np.zeros((6, 16)), np.ones(16), None, 1e-5, "rmsnorm",
                                    "float32", np.zeros((6, 16)), np.zeros((6, 1))),
     r"g_residual has shape \(6, 1\) but x has shape \(6, 16\)"),
])
def test_public_methods_reject_before_the_hook(call, message):
    backend = HooksOnly()
    with pytest.raises(ValueError, match=message) as info:
        call(backend)
    assert "\n" not in str(info.value)
    assert backend.calls == []  # rejected by the template: the hook never ran


def test_valid_calls_reach_the_hooks():
    backend = HooksOnly()
    x = np.ones((2, 3, 8))
    assert _forward(backend, x).states.shape == (2, 2, 3, 8)
    out, s = _fused(backend, np.ones((6, 16)), np.ones((6, 16)), np.ones(16))
    assert backend.calls == ["_stack_forward", "_fused_add_norm"]
    np.testing.assert_array_equal(s, 2.0)


def test_hooks_not_written_raise_not_implemented():
    """A claimed method whose hook is missing, and an unclaimed family, are NotImplementedError, as before."""
    backend = HooksOnly()
    with pytest.raises(NotImplementedError, match="backend 'hooks_only' does not implement stack_vjp"):
        backend.stack_vjp(CFG, draw_params(CFG, 0), np.zeros((2, 3, 8)), np.zeros((2, 3, 8)), "float32")
    with pytest.raises(NotImplementedError, match="does not implement tensor-parallel layers"):
        backend.tp_stack_forward(CFG, draw_params(CFG, 0), np.zeros((2, 3, 8)), "float32", 2)

    class FusedOnly(HooksOnly):
        @property
        def capabilities(self) -> Capabilities:
            return Capabilities(dtypes=claims("float32"), fused_kinds=frozenset({"rmsnorm"}), blocks=False)

    with pytest.raises(NotImplementedError, match=r"offers fused add\+norm only"):
        _forward(FusedOnly(), np.zeros((2, 3, 8)))


def test_the_hook_itself_is_not_guarded():
    """What BI-1 relies on: calling the hook skips the template, so a subject that broadcasts shows it."""
    backend = HooksOnly()
    out, s = backend._fused_add_norm(np.zeros((6, 16)), np.ones((1, 16)), np.ones(16), None, 1e-5, "rmsnorm",
                                     "float32")
    assert s.shape == (6, 16)


def test_bi1_mutant_broadcasts_behind_a_template_that_rejects():
    """tests/mutants.py FusedSilentBroadcast: the public call is rejected, the hook BI-1 calls broadcasts."""
    from tests.mutants import FusedSilentBroadcast

    mutant, x = FusedSilentBroadcast(), np.ones((6, 16))
    with pytest.raises(ValueError, match=r"residual has shape \(1, 16\) but x has shape \(6, 16\)"):
        mutant.fused_add_norm(x, x[:1], np.ones(16), None, 1e-5, "rmsnorm", "float32")
    _, s = mutant._fused_add_norm(x, x[:1], np.ones(16), None, 1e-5, "rmsnorm", "float32")
    assert s.shape == (6, 16)

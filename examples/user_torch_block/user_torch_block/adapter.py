"""resconf adapter for MyPreLNBlock: the one file that knows both the suite and the user's model.

It uses only resconf's public API (the `backends` package) and claims exactly what the model can express:
the `pre` placement, layers of one `mlp` sublayer, layernorm or rmsnorm, float32 and float64, on the CPU.
It claims no layer-model features (Capabilities.features stays empty: no second sublayer, no final norm,
GELU only, biases everywhere). The suite skips, and records as skipped, everything else. It validates
nothing by hand: `Backend`'s public methods check the claim and the shapes, then call the hooks below.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from resconf.backends import Backend, BlockConfig, Capabilities, LayerParams, StackGrads, StackTrace, claims
from user_torch_block.model import MyPreLNBlock

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}  # the dtypes claimed, as torch's
GELU_APPROXIMATION = {"tanh": "tanh", "exact": "none"}  # resconf's name -> nn.GELU(approximate=...)
# The suite's tensor name (LayerParams, `<sublayer>.<name>`) -> the block's parameter. The suite stores linear
# weights as (in, out) for y = x @ w + b; nn.Linear stores (out, in), so those two are transposed on the way
# in and out. A layernorm layer has all six; an rmsnorm one has no mlp.norm_bias.
PARAMETER_OF = {"mlp.norm_weight": "ln.weight", "mlp.norm_bias": "ln.bias", "mlp.w_up": "fc.weight",
                "mlp.b_up": "fc.bias", "mlp.w_down": "proj.weight", "mlp.b_down": "proj.bias"}
TRANSPOSED = frozenset({"mlp.w_up", "mlp.w_down"})


class UserBlockBackend(Backend):
    """A stack of MyPreLNBlock, parameters from the suite, gradients from torch autograd."""

    name = "user_torch_block"
    devices = ("cpu",)
    block_class: type[MyPreLNBlock] = MyPreLNBlock  # what each block is made of; a variant subclasses and swaps it
    inherits_xfails = "torch"  # it runs torch's ops, so torch's known deviations may show here too

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(placements=frozenset({"pre"}), norms=frozenset({"layernorm", "rmsnorm"}),
                            branches=frozenset({"mlp"}), dtypes=claims("float64", "float32"))

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    # The hooks: Backend's public stack_forward / stack_vjp have already checked the dtype and the
    # configuration against `capabilities`, x's (B, T, d_model) shape and g's, before calling these.
    def _stack_forward(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, dtype: str
                       ) -> StackTrace:
        blocks = self.build_blocks(cfg, params, dtype)
        writes: list[torch.Tensor] = []  # each block's write F: the output of its `proj`, caught by a hook
        for block in blocks:  # the blocks live for this call only, so the hooks need no removing
            block.proj.register_forward_hook(lambda module, args, out: writes.append(out))
        with torch.no_grad():
            states = run_stack(blocks, self.tensor(x, dtype))
        return StackTrace(states=as_numpy(torch.stack(states)), writes=as_numpy(torch.stack(writes)))

    def _stack_vjp(self, cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, g: np.ndarray,
                   dtype: str) -> StackGrads:
        blocks = self.build_blocks(cfg, params, dtype)
        x0 = self.tensor(x, dtype).requires_grad_()
        run_stack(blocks, x0)[-1].backward(self.tensor(g, dtype))  # fills x0.grad and every parameter's .grad
        dparams = tuple(gradients_as_params(block, p) for block, p in zip(blocks, params))
        return StackGrads(dx=as_numpy(x0.grad), dparams=dparams)

    def build_blocks(self, cfg: BlockConfig, params: Sequence[LayerParams], dtype: str) -> list[MyPreLNBlock]:
        """One MyPreLNBlock per layer record, in `dtype`, holding exactly the suite's parameters."""
        blocks = []
        for p in params:
            block = self.block_class(cfg.d_model, cfg.d_hidden, cfg.norm, cfg.eps, GELU_APPROXIMATION[cfg.gelu])
            block = block.to(TORCH_DTYPES[dtype])
            # strict: a parameter the suite did not provide (or the reverse), or of another shape, is an error
            # naming both shapes (torch's own check: the suite's BI-1 calls this hook directly)
            block.load_state_dict({PARAMETER_OF[name]: torch.tensor(t.T if name in TRANSPOSED else t)
                                   for name, t in p.items()})
            blocks.append(block)
        return blocks

    def tensor(self, a: np.ndarray, dtype: str) -> torch.Tensor:
        """Exact: the suite hands float64 values already representable in `dtype`."""
        return torch.tensor(np.asarray(a, dtype=np.float64), device=self.device).to(TORCH_DTYPES[dtype])


def run_stack(blocks: list[MyPreLNBlock], x: torch.Tensor) -> list[torch.Tensor]:
    """x_0 .. x_L."""
    states = [x]
    for block in blocks:
        states.append(block(states[-1]))
    return states


def gradients_as_params(block: MyPreLNBlock, p: LayerParams) -> LayerParams:
    """The block's parameter gradients in the suite's layout (the names of p, weights back to (in, out))."""
    grad = {name: block.get_parameter(PARAMETER_OF[name]).grad for name, _ in p.items()}
    return LayerParams({name: as_numpy(d.T if name in TRANSPOSED else d) for name, d in grad.items()})


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """float64 NumPy on the host; the upcast is exact."""
    return t.detach().to("cpu", torch.float64).numpy()

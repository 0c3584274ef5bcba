"""The FLOP and byte models of the preset stacks (reports/flops.py) against the parameters the benchmark draws.

Every 2-D weight (a, b) of a drawn layer is one matmul on T tokens, 2·T·a·b FLOPs forward; attention adds the
T x T scores and weighted sum, 4·T²·C. Counted here from the tensors themselves, not from the formulas.
"""
from __future__ import annotations

import pytest

from resconf.backends.params import draw_params
from resconf.reports import flops as fl


@pytest.mark.parametrize("preset", fl.PRESETS)
@pytest.mark.parametrize("tokens, d_model, depth", [(256, 256, 2), (1024, 768, 1)])
def test_flops_and_parameters_match_the_drawn_weights(preset, tokens, d_model, depth):
    cfg = fl.preset_config(preset, d_model, depth)
    layers = draw_params(cfg, 0)
    matrices = [t.shape for layer in layers for _, t in layer.items() if t.ndim == 2]
    counted = sum(2 * tokens * a * b for a, b in matrices) + depth * 4 * tokens ** 2 * d_model
    assert fl.stack_flops(cfg, tokens, backward=False) == counted
    assert fl.stack_flops(cfg, tokens, backward=True) == 3 * counted
    assert depth * fl.layer_parameters(cfg) == sum(a * b for a, b in matrices)


def test_the_presets_are_the_layers_they_name():
    gpt2, llama = fl.preset_config("gpt2", 768, 2), fl.preset_config("llama", 768, 2)
    assert (gpt2.norm, gpt2.n_heads, gpt2.n_kv_heads, gpt2.gated, gpt2.rope) == ("layernorm", 12, None, False, False)
    assert (llama.norm, llama.n_heads, llama.n_kv_heads, llama.gated, llama.rope) == ("rmsnorm", 12, 6, True, True)
    assert llama.d_ff == 2048  # 2/3 of 4·768, a multiple of 64


def test_work_prices_the_benchmarks_by_their_asv_parameters():
    params = {"preset": "llama", "shape": (256, 256), "depth": 2}
    flops, nbytes = fl.work("preset_stack_forward_backward", params, 2)
    cfg = fl.preset_config("llama", 256, 2)
    assert flops == fl.stack_flops(cfg, 256, True)
    assert nbytes == 3 * (2 * fl.layer_parameters(cfg) + 2 * 256 * 256 * 2) * 2
    assert fl.work("matmul", {"n": 1024}, 4) == (2 * 1024 ** 3, 3 * 1024 ** 2 * 4)
    assert fl.work("add_rmsnorm_forward", {}, 4) is None

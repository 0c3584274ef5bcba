"""The tensor-parallel split (backends/tensor_parallel.py) run in float64 NumPy: rank by rank, then the
all-reduce, so the spec itself is checked against the unsplit oracle (tests/test_tensor_parallel.py)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import LayerParams
from resconf.backends.tensor_parallel import OUT_BIAS, local_config, shard_params, without_out_bias


def reference_forward(cfg: BlockConfig, params: Sequence[LayerParams], x: np.ndarray, ranks: int) -> np.ndarray:
    """x_U computed the tensor-parallel way in float64 NumPy: the spec, run (tests/test_tensor_parallel.py)."""
    local = local_config(cfg, ranks)
    for p in params:
        shards = [shard_params(cfg, p, r, ranks) for r in range(ranks)]
        for kind in cfg.sublayers:
            h = ref.norm(cfg, p.sub(kind), x)  # (B, T, C), replicated
            parts = [ref.BRANCH[kind](local, without_out_bias(s.sub(kind), kind), h) for s in shards]
            out = sum(parts[1:], parts[0])  # the all-reduce
            bias = getattr(p.sub(kind), OUT_BIAS[kind])
            w = ref._write_scale(cfg, p.sub(kind)) * (out if bias is None else out + bias)
            x = cfg.skip * x + w
    return x

"""Every output of a block backend against the oracle, one relative error per tensor (the adapter tests').

The adapter tests bound these with a sanity tolerance; the suite's error budgets are conformance's business.
"""
from __future__ import annotations

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.dtypes import round_to
from resconf.backends.params import draw_params

# A gradient that cancels to far below the others of its layer is rounding noise of the terms cancelled, not
# of itself: the key bias without RoPE (exactly 0, softmax ignores q.b_k), or q and k of a plain stack's
# second layer (its input nearly the same for every token, so the logits nearly constant). Its error is
# measured against this fraction of the layer's largest gradient instead.
CANCELLED = 1e-3


def inputs(seed: int, shape, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return round_to(rng.standard_normal(shape), dtype), round_to(rng.standard_normal(shape), dtype)


def rel_error(got: np.ndarray, want: np.ndarray, floor: float = 0.0) -> float:
    """max |got - want| over max |want| (or the floor, if larger): one number per tensor."""
    scale = max(float(np.max(np.abs(want), initial=0.0)), floor)
    diff = float(np.max(np.abs(got - want), initial=0.0))
    return diff / scale if scale else diff


def errors(backend, ref, cfg: BlockConfig, shape, dtype: str = "float64", seed: int = 3,
           zero: tuple[str, ...] = ()) -> dict[str, float]:
    """Relative error vs the oracle of every output: states, writes, final norm, dx, each parameter gradient;
    the tensors named in `zero` set to 0 in every layer."""
    params = tuple(p.map(lambda t: round_to(t, dtype)) for p in draw_params(cfg, seed=seed, perturb=True))
    params = tuple(p.replace({name: np.zeros_like(p[name]) for name in zero if name in p}) for p in params)
    x, g = inputs(seed + 1, shape, dtype)
    got, want = backend.stack_forward(cfg, params, x, dtype), ref.stack_forward(cfg, params, x, dtype)
    assert (got.final is None) == (want.final is None) == (not cfg.final_norm)
    assert got.states.shape == want.states.shape == (cfg.n_updates + 1, *shape)
    assert got.writes.shape == want.writes.shape == (cfg.n_updates, *shape)
    found = {"states": rel_error(got.states, want.states), "writes": rel_error(got.writes, want.writes)}
    if cfg.final_norm:
        found["final"] = rel_error(got.final, want.final)
    got_g, want_g = backend.stack_vjp(cfg, params, x, g, dtype), ref.stack_vjp(cfg, params, x, g, dtype)
    found["dx"] = rel_error(got_g.dx, want_g.dx)
    for layer, (gp, wp) in enumerate(zip(got_g.dparams, want_g.dparams, strict=True)):
        assert [n for n, _ in gp.items()] == [n for n, _ in wp.items()], f"layer {layer}'s gradient names"
        floor = CANCELLED * max(float(np.max(np.abs(t), initial=0.0)) for _, t in wp.items())
        found |= {f"d{name}[{layer}]": rel_error(gp[name], t, floor) for name, t in wp.items()}
    return found

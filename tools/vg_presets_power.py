"""Monte Carlo of VG-2's and VG-3's checks on the layer presets, on the float64 oracle: false failures and power.

For each preset whose writes are projections (conformance/test_variance.py, _projection_presets), over fresh
seeds (weights and tokens), at gpt2 init and 12 layers, the z-scores of
  - the sum of the write variances against the sum of their expectations given what the output projections
    multiply (VG-3; stream_theory.projection_write_band),
  - the growth Var(x_U) - Var(x_0) against the same sum (VG-2), and the largest per-update covariance z.
Prints per preset: mean and sd of each z (sd > 1: the band is too narrow), max |z|, and the write-sum's
relative sd (the smallest change of every write's variance detected with 95 % power is (Z + 1.645 sd z) times it).
Also the mean realised growth and the growth the per-element model predicts (L sublayers of the mlp's variance).

    python tools/vg_presets_power.py --seeds 500 [--preset gpt2] [--mutant BidirectionalWhenCausal]
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import draw_params, expected_std
from resconf.backends.presets import PRESETS, preset
from resconf.conformance import stream_theory as theory
from resconf.conformance.budgets import Z
from resconf.conformance.test_variance import PRESET_DEPTH, STAT_SHAPE, write_bands


def z_scores(cfg, seed: int, forward_cfg) -> tuple[float, float, float, float, float]:
    """(write-sum z, growth z, max covariance |z|, write-sum relative sd, growth) for one seed."""
    params = draw_params(cfg, seed)
    x = np.random.default_rng(10**6 + seed).normal(size=STAT_SHAPE)
    trace = ref.stack_forward(forward_cfg, params, x)
    state_vars, write_vars, covs = theory.stream_variances(trace.states, trace.writes)
    bands, cov_sd = write_bands(cfg, params, trace.states[:-1], expected_std(cfg, "out") * cfg.branch_scale)
    expected, write_sd = bands[:, 0].sum(), np.sqrt(np.sum(bands[:, 1] ** 2))
    growth = state_vars[-1] - state_vars[0]
    return ((write_vars.sum() - expected) / write_sd,
            (growth - expected) / np.sqrt(write_sd**2 + 4.0 * np.sum(cov_sd**2)),
            float(np.max(np.abs(covs) / cov_sd)), write_sd / expected, growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--preset", choices=list(PRESETS), action="append")
    parser.add_argument("--mutant", help="a field=value the forward gets wrong, e.g. causal=False")
    args = parser.parse_args()
    print("| preset | seeds | write sum: mean z | sd z | max abs z | relative sd | growth: mean z | sd z | max abs z "
          "| max covariance abs z | growth |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.preset or PRESETS:
        cfg = preset(name, placement="pre", init="gpt2", depth=PRESET_DEPTH, d_model=STAT_SHAPE[-1])
        if cfg.branch_norm or cfg.layer_scale is not None:
            continue
        forward_cfg = cfg
        if args.mutant:
            field, value = args.mutant.split("=")
            forward_cfg = dataclasses.replace(cfg, **{field: eval(value)})  # noqa: S307 (a command-line literal)
        rows = np.array([z_scores(cfg, seed, forward_cfg) for seed in range(args.seeds)])
        w, g, c, rel, growth = rows.T
        print(f"| {name} | {args.seeds} | {w.mean():+.2f} | {w.std(ddof=1):.2f} | {np.abs(w).max():.2f} "
              f"| {np.median(rel):.4f} | {g.mean():+.2f} | {g.std(ddof=1):.2f} | {np.abs(g).max():.2f} | {c.max():.2f} "
              f"| {growth.mean():.4f} |",
              flush=True)
    print(f"\nZ = {Z}: delta_95 = (Z + 1.645 sd z) x relative sd.")


if __name__ == "__main__":
    main()

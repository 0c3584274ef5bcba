"""Monte Carlo of GR-3's theory gate on the float64 oracle: is the band for ||grad x_0|| / ||g|| right?

Over fresh seeds (weights, x and g), for GR-3's stack (pre, linear, layernorm, standard init, C = 16, shape
test_gradient.SWEEP_SHAPE) at each depth of its sweep, z = (log(||grad x_0||^2 / ||g||^2) - E) / sd with (E, sd) from
stream_theory.gradient_ratio_band. Prints per depth: the mean ratio, the theory's, mean and sd of z (sd > 1:
the band is too narrow), max |z|, and the smallest change of the squared ratio detected with 95 % power at
|z| <= Z, exp((Z + 1.645 sd z) sd) - 1.

    python tools/gr3_power.py --seeds 500
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np

from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import draw_params, expected_std
from resconf.conformance import stream_theory as theory
from resconf.conformance.budgets import Z
from resconf.conformance.test_gradient import SWEEP_DEPTHS, SWEEP_SHAPE as SHAPE, sweep_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=500)
    args = parser.parse_args()
    cfg = sweep_config()
    rows = {depth: [] for depth in SWEEP_DEPTHS}
    for seed in range(args.seeds):
        params = draw_params(cfg, seed)
        rng = np.random.default_rng(10**6 + seed)
        x, g = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
        for depth in SWEEP_DEPTHS:
            c = dataclasses.replace(cfg, depth=depth)
            states = ref.stack_forward(c, params[:depth], x).states
            dx, _, cotangents = ref.backward(c, params[:depth], x, g)
            mean, sd = theory.gradient_ratio_band(states, np.stack(cotangents), expected_std(c, "out"), c.eps)
            ratio2 = float(np.sum(dx * dx) / np.sum(g * g))
            rows[depth].append((ratio2, math.exp(mean), (math.log(ratio2) - mean) / sd, sd))
    print("| depth | seeds | mean ratio^2 | theory | mean z | sd z | max abs z | sd of log ratio^2 "
          "| change detected at 95 % |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for depth, values in rows.items():
        r2, theory_r2, z, sd = np.array(values).T
        detected = math.expm1((Z + 1.645 * z.std(ddof=1)) * np.median(sd))
        print(f"| {depth} | {args.seeds} | {r2.mean():.4f} | {theory_r2.mean():.4f} | {z.mean():+.2f} "
              f"| {z.std(ddof=1):.2f} "
              f"| {np.abs(z).max():.2f} | {np.median(sd):.4f} | {detected:.1%} |")


if __name__ == "__main__":
    main()

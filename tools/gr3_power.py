"""Monte Carlo of GR-3's theory gate on the float64 oracle: is the band for ||grad x_0|| / ||g|| right?

Over fresh seeds (weights, x and g), for GR-3's stack (pre, linear, layernorm, standard init, C = 16, shape
test_gradient.SWEEP_SHAPE) at each depth of its sweep, z = (log(||grad x_0||^2 / ||g||^2) - E) / sd with (E, sd) from
stream_theory.gradient_ratio_band. Prints per depth: the mean ratio, the theory's, mean and sd of z (sd > 1:
the band is too narrow), max |z|, and the smallest change of the squared ratio detected with 95 % power at
|z| <= Z, exp((Z + 1.645 sd z) sd) - 1.

    python tools/gr3_power.py --seeds 500
    python tools/gr3_power.py --presets --seeds 500   # test_gradient_ratio_on_presets' band (gradient_band.py)
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
from resconf.conformance.gradient_band import stack_band
from resconf.conformance.test_gradient import (GR3_PRESET_SHAPE, GR3_PRESETS, SWEEP_DEPTHS, SWEEP_SHAPE as SHAPE,
                                               gr3_preset, sweep_config)

HEADER = ("| {first} | seeds | mean ratio^2 | theory | mean z | sd z | max abs z | sd of log ratio^2 "
          "| change detected at 95 % |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--first-seed", type=int, default=0, help="of the presets' seeds (split a run over processes)")
    parser.add_argument("--presets", action="store_true", help="the presets' band instead of the linear sweep's")
    args = parser.parse_args()
    if args.presets:
        return presets(range(args.first_seed, args.first_seed + args.seeds))
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
    print(HEADER.format(first="depth"))
    for depth, values in rows.items():
        print(_row(depth, args.seeds, values))


def presets(seeds: range) -> None:
    """test_gradient_ratio_on_presets' band over fresh seeds, each preset at its depth and shape."""
    rows = {name: [] for name in GR3_PRESETS}
    for seed in seeds:
        rng = np.random.default_rng(10**6 + seed)
        x, g = rng.normal(size=GR3_PRESET_SHAPE), rng.normal(size=GR3_PRESET_SHAPE)
        for name in GR3_PRESETS:
            cfg = gr3_preset(name)
            params = draw_params(cfg, seed)
            dx = ref.stack_vjp(cfg, params, x, g).dx
            mean, sd = stack_band(cfg, params, x, g)
            ratio2 = float(np.sum(dx * dx) / np.sum(g * g))
            rows[name].append((ratio2, math.exp(mean), (math.log(ratio2) - mean) / sd, sd))
        if (seed + 1) % 50 == 0:
            print(f"{seed + 1 - seeds.start} seeds", flush=True)
    print(HEADER.format(first="preset"))
    for name, values in rows.items():
        print(_row(name, len(seeds), values))


def _row(first, seeds: int, values) -> str:
    r2, theory_r2, z, sd = np.array(values).T
    detected = math.expm1((Z + 1.645 * z.std(ddof=1)) * np.median(sd))
    return (f"| {first} | {seeds} | {r2.mean():.4f} | {theory_r2.mean():.4f} | {z.mean():+.2f} | {z.std(ddof=1):.2f} "
            f"| {np.abs(z).max():.2f} | {np.median(sd):.4f} | {detected:.1%} |")


if __name__ == "__main__":
    main()

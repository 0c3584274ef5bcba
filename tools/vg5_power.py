"""Monte Carlo of VG-5 (layer ablation) on the float64 oracle: its false-failure rate and its power.

Over fresh seeds, z = (r^2 - E) / sd with r^2 = ||x_L - x_L without layer k||^2 / ||F_k||^2 and (E, sd) from
stream_theory.ablation_ratio, for the layers conformance/test_ablation.py deletes. Prints per layer: mean and
sd of z, max |z|, the median sd relative to E, and the relative change of r^2 detected with 95 % power at
|z| <= Z: (Z + 1.645 sd(z)) sd / E.

    python tools/vg5_power.py --seeds 100
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import draw_params, expected_std
from resconf.conformance import stream_theory as theory
from resconf.conformance.budgets import Z
from resconf.conformance.test_ablation import DELETED, DEPTH
from resconf.conformance.test_variance import STAT_SHAPE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    cfg = BlockConfig(placement="pre", norm="layernorm", branch="linear", init="gpt2", depth=DEPTH,
                      d_model=STAT_SHAPE[-1])
    shorter = dataclasses.replace(cfg, depth=DEPTH - 1)
    z, relative = {k: [] for k in DELETED}, {k: [] for k in DELETED}
    for seed in range(args.seeds):
        params = draw_params(cfg, seed)
        x = np.random.default_rng(10**6 + seed).normal(size=STAT_SHAPE)
        full = ref.stack_forward(cfg, params, x)
        for k in DELETED:
            change = full.states[-1] - ref.stack_forward(shorter, params[:k] + params[k + 1:], x).states[-1]
            r2 = np.sum(change**2) / np.sum(full.writes[k] ** 2)
            expected, sd = theory.ablation_ratio(full.states, full.writes[k], k, expected_std(cfg, "out"))
            z[k].append((r2 - expected) / sd)
            relative[k].append(sd / expected)
    print("| layer deleted | seeds | mean z | sd z | max abs z | sd / E | change of r^2 at 95 % power |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in DELETED:
        zk, rel = np.array(z[k]), float(np.median(relative[k]))
        print(f"| {k + 1} | {len(zk)} | {zk.mean():+.2f} | {zk.std(ddof=1):.2f} | {np.abs(zk).max():.2f} | {rel:.4f} | "
              f"{(Z + 1.645 * zk.std(ddof=1)) * rel:.3f} |")


if __name__ == "__main__":
    main()

"""Monte Carlo of VG-3's write-sum statistic on the float64 oracle: its false-failure rate and its power.

For each branch, init and depth of conformance/test_variance.py's VG-3, over fresh seeds (weights and
tokens), z = (sum of the layers' realised write variances - L v) / the model's sd (stream_theory.write_sum_sd).
Prints per row: mean and sd of z (sd > 1 means the model's spread is too small), max |z|, and the
effect detected with 95 % power at the suite's |z| <= Z (and the sd and max |z| of the growth check's z): the relative change delta of every write's variance
with |delta| L v / sd_model >= Z + 1.645 sd(z), i.e. delta_95 = (Z + 1.645 sd(z)) sd_model / (L v).

    python tools/vg3_power.py --seeds 200 [--branch linear] [--init gpt2]
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import BASE_STD, draw_params, expected_std
from resconf.conformance import stream_theory as theory
from resconf.conformance.budgets import Z
from resconf.conformance.test_variance import STAT_SHAPE, VG3_BRANCHES, VG3_DEPTHS, down_inputs


def z_scores(cfg: BlockConfig, seeds: range) -> np.ndarray:
    tokens = STAT_SHAPE[0] * STAT_SHAPE[1]
    v = theory.sample_write_variance(cfg, BASE_STD, expected_std(cfg, "out"))
    out, sds, growth = [], [], []
    for seed in seeds:
        x = np.random.default_rng(10**6 + seed).normal(size=STAT_SHAPE)
        params = draw_params(cfg, seed)
        trace = ref.stack_forward(cfg, params, x)
        state_vars, write_vars, _ = theory.stream_variances(trace.states, trace.writes)
        sd = theory.write_sum_sd(cfg, BASE_STD, v, theory.input_anisotropy(trace.states[:-1], cfg.eps), tokens)
        out.append((write_vars.sum() - cfg.depth * v) / sd)
        sds.append(sd / (cfg.depth * v))
        cov_sd = theory.covariance_sd(down_inputs(cfg, params, trace.states[:-1]), trace.states[:-1],
                                      expected_std(cfg, "out"))
        growth.append((state_vars[-1] - state_vars[0] - cfg.depth * v) / np.sqrt(4 * np.sum(cov_sd**2) + sd**2))
    return np.array(out), float(np.median(sds)), np.array(growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--branch", choices=list(VG3_BRANCHES), action="append")
    parser.add_argument("--init", choices=("gpt2", "standard"), action="append")
    parser.add_argument("--depth", type=int, choices=VG3_DEPTHS, action="append")
    args = parser.parse_args()
    print("| branch | init | L | seeds | mean z | sd z | max abs z | model sd / L v | delta_95 | growth: sd z | max abs z |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for branch in args.branch or VG3_BRANCHES:
        for init in args.init or ("gpt2", "standard"):
            for depth in args.depth or VG3_DEPTHS:
                cfg = BlockConfig(placement="pre", norm="layernorm", init=init, depth=depth, d_model=STAT_SHAPE[-1],
                                  **VG3_BRANCHES[branch])
                z, relative_sd, growth = z_scores(cfg, range(args.seeds))
                delta = (Z + 1.645 * z.std(ddof=1)) * relative_sd
                print(f"| {branch} | {init} | {depth} | {len(z)} | {z.mean():+.2f} | {z.std(ddof=1):.2f} | "
                      f"{np.abs(z).max():.2f} | {relative_sd:.4f} | {delta:.3f} | {growth.std(ddof=1):.2f} | "
                      f"{np.abs(growth).max():.2f} |", flush=True)


if __name__ == "__main__":
    main()

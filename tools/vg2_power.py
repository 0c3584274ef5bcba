"""Monte Carlo of VG-2 (the seeds' example: 192 linear writes of variance 0.01) on the float64 oracle.

Over fresh seeds, the z-scores of both checks: each layer's Cov(x_{l-1}, F_l) over its sd given the stream
(test_variance.write_bands), and Var(x_L) against 1 + 192 x 0.01; beside them the isotropic model that the
suite used before (every token independent with identity covariance). Prints the sd of z (1 when the model is right) by
layer and the largest |z|.

    python tools/vg2_power.py --seeds 100
"""
from __future__ import annotations

import argparse

import numpy as np

from resconf.backends.config import BlockConfig
from resconf.backends.oracle import numpy_ref as ref
from resconf.backends.params import BASE_STD, draw_params
from resconf.conformance import stream_theory as theory
from resconf.conformance.test_variance import STAT_SHAPE, write_bands

DEPTH, WRITE_VARIANCE = 192, 0.01


def isotropic_sds(state_vars: np.ndarray, write_vars: np.ndarray, n: int, C: int) -> tuple[float, float]:
    """The earlier model: (sd of a correlation, sd of Var(x_L) - Var(x_0)) for n elements and C features."""
    r = np.sqrt(1.0 / n + 1.0 / C**2)
    cov = 4.0 * r**2 * np.sum(state_vars * WRITE_VARIANCE)
    writes = np.sum(write_vars**2) * (2.0 / C**2 + 2.0 / n)
    return r, float(np.sqrt(cov + writes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    C = STAT_SHAPE[-1]
    cfg = BlockConfig(placement="pre", norm="layernorm", branch="linear", depth=DEPTH, d_model=C)
    std_out, n, expected = np.sqrt(WRITE_VARIANCE / C), int(np.prod(STAT_SHAPE)), 1.0 + DEPTH * WRITE_VARIANCE
    z = {"covariance, isotropic model": [], "covariance": [], "Var(x_L), isotropic model": [], "Var(x_L)": []}
    for seed in range(args.seeds):
        params = tuple(p.replace({"linear.w_out": p["linear.w_out"] * std_out / BASE_STD}) for p in draw_params(cfg, seed))
        trace = ref.stack_forward(cfg, params, np.random.default_rng(10**6 + seed).normal(size=STAT_SHAPE))
        state_vars, write_vars, covs = theory.stream_variances(trace.states, trace.writes)
        bands, cov_sd = write_bands(cfg, params, trace.states[:-1], std_out)
        r_sd, growth_sd = isotropic_sds(state_vars[:-1], write_vars, n, C)
        z["covariance, isotropic model"].append(covs / np.sqrt(state_vars[:-1] * write_vars) / r_sd)
        z["covariance"].append(covs / cov_sd)
        z["Var(x_L), isotropic model"].append([(state_vars[-1] - expected) / np.hypot(growth_sd, np.sqrt(2.0 / n))])
        sd = np.sqrt(np.sum(4 * cov_sd**2 + bands[:, 1] ** 2) + 2.0 / n)
        z["Var(x_L)"].append([(state_vars[-1] - expected) / sd])
    for name, values in z.items():
        values = np.array(values)
        by_layer = ", ".join(f"{values[:, layer].std(ddof=1):.2f}" for layer in sorted({0, values.shape[1] // 2,
                                                                                         values.shape[1] - 1}))
        print(f"{name}: sd of z {by_layer} (first, middle, last layer), max |z| {np.abs(values).max():.2f}")


if __name__ == "__main__":
    main()

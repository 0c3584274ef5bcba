"""Monte Carlo of XB-6's band (conformance/test_error_growth.py): over fresh seeds (weights and x), the
z = (rho - 1) / sd of both fields for the baseline and the positive controls (backends/oracle/controls.py:
correct roundings in other orders, which must pass), and for the baseline with its inverse RMS rounded to
`bits` significant bits (bits = 8 is bfloat16's), which must fail. Prints per dtype and arithmetic: mean and
sd of z (sd near 1: the band's sd is right), max z, the sd of rho, and the fraction of seeds with z > Z.

    python tools/xb6_power.py --seeds 40 --dtypes float32,float16,bfloat16 [--backends torch,jax]

--backends runs real backends (correct roundings too) instead of the emulated ones.
"""
from __future__ import annotations

import argparse

import numpy as np

from resconf.backends.oracle import numpy_ops as ops
from resconf.backends.oracle.controls import CONTROLS, Baseline
from resconf.backends.registry import load_backend
from resconf.backends.config import BlockConfig
from resconf.conformance.budgets import Z
from resconf.conformance.test_error_growth import DEPTH, SHAPE, coherence, growth_case, local_errors, write_errors
from tests.mutants import _swapped

CFG = BlockConfig(placement="pre", norm="rmsnorm", branch="linear", depth=DEPTH, d_model=SHAPE[-1])
BITS = (8, 10, 11, 12, 13, 14)


def coarse_inverse_rms(bits: int):
    """ops._rmsnorm_stats with the inverse RMS rounded to `bits` significant bits (its bias: ~2^-bits)."""
    original = ops._rmsnorm_stats

    def stats(x, eps):
        xhat, rinv = original(x, eps)
        m, e = np.frexp(np.asarray(rinv, dtype=np.float64))
        coarse = np.ldexp(np.round(m * 2.0**bits) / 2.0**bits, e).astype(np.asarray(rinv).dtype)
        return xhat * (coarse / rinv), coarse
    return stats


def z_scores(backend, seed: int, dtype: str, bits: int | None) -> tuple[float, float, float, float]:
    params, x = growth_case(CFG, seed, dtype)
    with _swapped(ops, "_rmsnorm_stats", coarse_inverse_rms(bits) if bits else ops._rmsnorm_stats):
        states = backend.stack_forward(CFG, params, x, dtype).states
    lam, w = local_errors(CFG, params, states)
    (r1, s1), (r2, s2) = coherence(lam.reshape(DEPTH, -1)), coherence(write_errors(lam, w))
    return (r1 - 1) / s1, (r2 - 1) / s2, r1, r2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--backends", default="", help="real backends to run instead, comma-separated registry names")
    args = parser.parse_args()
    print("| dtype | arithmetic | seeds | stream z: mean, sd, max | write z: mean, sd, max | sd of rho (stream, write) "
          "| z > Z |")
    print("| --- | --- | ---: | --- | --- | --- | ---: |")
    for dtype in args.dtypes.split(","):
        arithmetics = [(b.name, b, None) for b in (Baseline(), *(c() for c in CONTROLS))]
        arithmetics += [(f"baseline, inverse RMS to {bits} bits", Baseline(), bits) for bits in BITS]
        if args.backends:
            arithmetics = [(name, load_backend(name), None) for name in args.backends.split(",")]
        for name, backend, bits in arithmetics:
            rows = []
            for seed in range(args.seeds):
                if isinstance(backend, Baseline):
                    backend.seed = seed  # its faithful perturbations: another legitimate draw per seed
                rows.append(z_scores(backend, 1000 + seed, dtype, bits))
            z1, z2, r1, r2 = np.array(rows).T
            failed = np.mean(np.maximum(z1, z2) > Z)
            print(f"| {dtype} | {name} | {args.seeds} | {z1.mean():+.2f}, {z1.std(ddof=1):.2f}, {z1.max():.1f} "
                  f"| {z2.mean():+.2f}, {z2.std(ddof=1):.2f}, {z2.max():.1f} | {r1.std(ddof=1):.3f}, "
                  f"{r2.std(ddof=1):.3f} | {failed:.0%} |", flush=True)


if __name__ == "__main__":
    main()

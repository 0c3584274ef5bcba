"""A deliberately slowed fused add+norm (a mutant): the NumPy baseline plus a second pass over half the rows.

Its work is 1.5x the baseline's, so a regression detector has to call it "slower" than `numpy`. Not in the
default grids; time it next to the baseline with RESCONF_BENCH_BACKENDS=benchmarks.slowed:SlowedNumpy
(docs/benchmarks.md, "Regression detection"). Extra work rather than a sleep: it competes for the memory
bus and the cores as a real slowdown does, so the machine's noise hits it as it hits the baseline.
"""
from __future__ import annotations

from .numpy_baseline import NumpyBaseline

EXTRA_ROWS = 0.5  # the share of rows computed twice: 1 + EXTRA_ROWS times the baseline's work


class SlowedNumpy(NumpyBaseline):
    name = "numpy_slowed"

    def bench_fused_add_norm(self, kind: str, dtype: str, with_bias: bool, backward: bool):
        fn = super().bench_fused_add_norm(kind, dtype, with_bias, backward)

        def slowed(x, residual, weight, bias, g_out):
            rows = int(EXTRA_ROWS * x.shape[0])
            fn(x[:rows], residual[:rows], weight, bias, g_out[:rows])  # the repeated half pass
            return fn(x, residual, weight, bias, g_out)

        return slowed

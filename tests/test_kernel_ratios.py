"""tools/kernel_ratios.py: numba_fused beside torch.compile and jax in one run, the ratios rival / numba_fused.
The asv classes are driven through gpu_bench.time_case; here it is faked (no framework), the real run is the
tool's --quick smoke (docs/benchmarks.md)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMES = {"numba_fused": 2e-3, "torch_compile": 5e-3, "jax": None}  # jax skipped: "-" in its columns


@pytest.fixture
def kr(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import kernel_ratios

    return kernel_ratios


def test_one_run_times_every_backend_on_both_ops_and_prints_the_ratios(kr, monkeypatch, capsys):
    asked = []

    def time_case(module, cls, method, values, plan):
        asked.append((cls.__name__, values["backend"], values["shape"], plan.samples))
        base = kr.gb.Record(kr.gb.SKIPPED, f"bench_fused.{cls.__name__}.{method}", method[5:], values["backend"],
                            "cpu", values["dtype"], *values["shape"], reason="not installed")
        t = TIMES[values["backend"]]
        if t is None:
            return base
        return dataclasses.replace(base, status=kr.gb.TIMED, time_s=t * (1 + ("Backward" in cls.__name__)),
                                   samples=3, calls_per_sample=1, setup_s=0.0)

    monkeypatch.setattr(kr.gb, "time_case", time_case)
    assert kr.main(["--quick", "--shape", "64x32"]) == 0
    assert [(c, b) for c, b, *_ in asked] == [(c, b) for c in ("AddRMSNormForward", "AddRMSNormForwardBackward")
                                              for b in ("numba_fused", "torch_compile", "jax")]
    assert {(shape, samples) for *_, shape, samples in asked} == {((64, 32), 3)}
    out = capsys.readouterr().out
    assert "| add_rmsnorm_forward | 2.00 | 5.00 | - | x2.50 | - |" in out
    assert "| add_rmsnorm_forward_backward | 4.00 | 10.00 | - | x2.50 | - |" in out
    assert "--quick: one-call samples, not a measurement" in out


def test_a_case_not_timed_leaves_its_ratios_blank(kr):
    assert "| add_rmsnorm_forward | - | 1.00 | - | - | - |" in kr.ratio_table(
        {("time_add_rmsnorm_forward", "torch_compile"): 1e-3}, "float32", (8, 8), False)

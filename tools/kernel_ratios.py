"""The CPU kernel side by side: numba's fused add+RMSNorm against torch.compile and jax, forward and
forward+backward, in one run, with the ratios (issue 25, "the CPU kernel").

Every case is the asv class of benchmarks/bench_fused.py run as asv runs it (tools/gpu_bench.py's time_case:
setup with its untimed warm-up call, then samples of the synchronised timed method), so these are the suite's
own measurements, one process for all of them, one after the other. The ratio is the rival's median time over
numba_fused's: x2.0 means numba_fused takes half the time. One run on a shared machine is no verdict: its load
moves the ratios (docs/benchmarks.md); quote the load average beside them.

  python tools/kernel_ratios.py [--shape 8192x4096] [--dtype float32] [--quick]

--quick: 3 samples of one call each after one warm-up call, a smoke test of the plumbing, not a measurement.
Exit status 0 when numba_fused and at least one rival were timed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench as gb  # noqa: E402  (puts the repository root on sys.path: `benchmarks` imports from there)

KERNEL, RIVALS = "numba_fused", ("torch_compile", "jax")
OPS = (("AddRMSNormForward", "time_add_rmsnorm_forward"),
       ("AddRMSNormForwardBackward", "time_add_rmsnorm_forward_backward"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernel_ratios.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=gb._shapes, default=((8192, 4096),), help="TOKENSxHIDDEN (default 8192x4096)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="3 one-call samples: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    plan = gb.Plan(1, 3, 0.0, 1) if args.quick else gb.Plan(3, 15, 0.02, 2000)
    from benchmarks import bench_fused

    shape = args.shape[0]
    times: dict[tuple[str, str], float] = {}
    for cls_name, method in OPS:
        for backend in (KERNEL, *RIVALS):
            values = {"backend": backend, "device": "cpu", "dtype": args.dtype, "shape": shape}
            record = gb.time_case(bench_fused, getattr(bench_fused, cls_name), method, values, plan)
            print(gb._line(record), flush=True)
            if record.status == gb.TIMED:
                times[(method, backend)] = record.time_s
    print()
    print(ratio_table(times, args.dtype, shape, args.quick))
    timed = {backend for _, backend in times}
    return 0 if KERNEL in timed and timed & set(RIVALS) else 1


def ratio_table(times: dict[tuple[str, str], float], dtype: str, shape: tuple[int, int], quick: bool) -> str:
    """A Markdown table: numba_fused's median time per op, each rival's, and rival / numba_fused."""
    head = ["op", f"{KERNEL} (ms)", *(f"{r} (ms)" for r in RIVALS), *(f"{r} / {KERNEL}" for r in RIVALS)]
    lines = [f"CPU, {dtype}, {shape[0]}x{shape[1]}" + (" (--quick: one-call samples, not a measurement)" if quick
                                                        else " (medians of 15 samples)"),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, method in OPS:
        base = times.get((method, KERNEL))
        rival = [times.get((method, r)) for r in RIVALS]
        cells = [method.removeprefix("time_"), _ms(base), *map(_ms, rival),
                 *(f"x{t / base:.2f}" if t is not None and base else "-" for t in rival)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())

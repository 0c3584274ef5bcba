"""The grid's frameworks, imported once in asv's forkserver so that every parameter combination forks them ready.

asv runs each combination in a process forked from a server that has imported the suite (asv.conf.json:
`launch_method: forkserver`). Without this, every combination that times torch, torch.compile or jax
imported its framework again: on the 2-core VM 2.2 s for torch, 3.7 s more for its compiler and 1.7 to
2.1 s for jax, about 40 % of the default grid's `asv run --quick`. Importing them starts no thread and
initialises no device (CUDA and XLA start in the combination, at first use), so forking afterwards is safe.

Only the server preloads (asv starts it as `... run_server BENCHMARK_DIR SOCKET`): discovery, `asv check`,
the tests and tools/gpu_bench.py import the suite without a framework, and a combination that skips still
costs milliseconds. RESCONF_BENCH_PRELOAD=0 turns it off.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

ENV = "RESCONF_BENCH_PRELOAD"
# What the built-in grid's combinations import on the CPU: torch and its compiler (torch_compile), jax, numba.
CPU_FRAMEWORKS = ("torch", "torch._dynamo", "torch._inductor.compile_fx", "jax", "jax.numpy", "numba")
CUDA_FRAMEWORKS = CPU_FRAMEWORKS + ("triton",)  # triton_fused and liger run only on the GPU


def in_forkserver(argv: list[str]) -> bool:
    """Whether this process is asv's forkserver (asv_runner's `run_server` command)."""
    return argv[1:2] == ["run_server"]


def wanted(argv: list[str], environ: dict[str, str]) -> bool:
    value = environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r}: expected 1 (import the frameworks once in asv's forkserver, the "
                         f"default) or 0 (each combination imports its own)")
    return value == "1" and in_forkserver(argv)


def preload(device: str) -> tuple[str, ...]:
    """Import the installed frameworks of `device`'s grid; the names imported. One that is not installed,
    or fails to import, is left for its combinations to report (as a skip, with the error)."""
    done = []
    for name in CUDA_FRAMEWORKS if device == "cuda" else CPU_FRAMEWORKS:
        top = name.partition(".")[0]
        if importlib.util.find_spec(top) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the combination that needs it raises it again, with its own context
            continue
        done.append(name)
    return tuple(done)


def preload_in_forkserver(device: str) -> tuple[str, ...]:
    return preload(device) if wanted(sys.argv, dict(os.environ)) else ()

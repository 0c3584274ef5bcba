"""Time the asv benchmark classes without asv, for tools/gpu-check.sh (the GPU machine has no asv).

Each class of benchmarks/bench_fused.py, bench_roofline.py, bench_presets.py (the gpt2 and llama stacks) and
bench_matmul.py (the compute peak) runs as asv would run it:
`setup(*params)` (NotImplementedError: skipped, with the reason), the timed method, `teardown`. The timed
method synchronises the device itself (the backend's `synchronize`), so a sample is `calls` synchronised
calls, divided by `calls`: asv's seconds per call. On a GPU a sample is timed by CUDA events with the L2
flushed before it (benchmarks/device_timing.py, the asv classes' own `timer` and flush); on the CPU by
perf_counter. Warm-up (setup's untimed call, then
`--warmup` more) stays out of the timed region; time_s is the median of `--samples` samples. Beside it,
time_s_pipelined times the same callable back to back (the class's fn, args and sync, one sync at the end):
the device's throughput without the launch-and-wait gap of every call.

  python tools/gpu_bench.py time --device cuda --backend torch --shapes 8192x4096 --out rows.jsonl
  python tools/gpu_bench.py time --device cuda --roofline --shapes 8192x4096 --out rows.jsonl
  python tools/gpu_bench.py time --device cuda --backend torch --suite presets --shapes 2048x1024 --out rows.jsonl
  python tools/gpu_bench.py time --device cuda --backend jax --suite matmul --shapes 4096x4096 --out rows.jsonl
  python tools/gpu_bench.py export rows.jsonl ... -o bench.parquet

`time` writes one JSON line per case as it finishes (a killed run keeps its finished cases) and exits 0 when
every case was timed or skipped and at least one was timed, 77 when all were skipped (1 with --strict), 1
when one failed. `export` writes the rows of `resconf bench-export` (docs/benchmarks.md), made by its own code
(reports/bench_export.py: GB/s from reports/bytes_moved.py, the copy roofline of the same device and shape),
plus the pipelined columns. Only asv's timing loop is done again here (`_samples`): asv, and with it
asv_runner, is not installed on the GPU machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import itertools
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a package at the repository root, as asv imports it

from benchmarks import device_timing as dt  # noqa: E402  (imports no framework, nor resconf)

SKIPPED, TIMED, FAILED = "skipped", "timed", "failed"
SUITES = {"fused": "bench_fused", "presets": "bench_presets", "matmul": "bench_matmul"}  # --suite: asv modules
RECORD_PARAMS = ("backend", "device", "dtype", "shape")  # a Record's own fields; the class's others go in `extra`
NOTHING_TIMED = 77  # exit status: every case skipped (automake's "skipped"; gpu-check.sh records a skipped step)


@dataclass(frozen=True)
class Plan:
    warmup: int  # untimed calls after setup's own
    samples: int
    min_sample_s: float  # calls per sample are chosen so that a sample lasts at least this long
    max_calls: int


@dataclass(frozen=True)
class Record:
    """One case: a JSON line of `time`, a row of `export` when timed."""

    status: str  # timed, skipped, failed
    benchmark: str  # asv's name: bench_fused.AddRMSNormForward.time_add_rmsnorm_forward
    op: str
    backend: str | None
    device: str
    dtype: str
    tokens: int
    hidden: int
    reason: str = ""  # why skipped or failed (one line)
    # the class's other parameters, as asv passes them: a preset stack's preset and depth, a matmul's n
    extra: dict = dataclasses.field(default_factory=dict)
    time_s: float | None = None  # median over samples of seconds per synchronised call (asv's measure)
    time_s_min: float | None = None
    samples: int | None = None
    calls_per_sample: int | None = None
    time_s_pipelined: float | None = None  # median seconds per call, calls back to back, one sync per sample
    setup_s: float | None = None  # setup: data, conversion, compile, the first call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_bench.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time", help="time one backend's fused add+norm cases, or the roofline")
    t.add_argument("--device", required=True, choices=("cpu", "cuda"))
    what = t.add_mutually_exclusive_group(required=True)
    what.add_argument("--backend", help="a backend name for bench_fused (torch, jax, triton_fused, liger, ...)")
    what.add_argument("--roofline", action="store_true", help="bench_roofline's copy and add")
    t.add_argument("--suite", choices=tuple(SUITES), default="fused",
                   help="with --backend: the fused add+norm ops (default), the preset stacks or the matmul peak")
    t.add_argument("--shapes", type=_shapes, required=True, help="tokensxhidden, comma separated: 8192x4096,8192x8192 "
                   "(a preset stack's tokens x d_model; a matmul takes n from the first number)")
    t.add_argument("--dtypes", default="bfloat16,float32", help="fused dtypes (the roofline uses its own)")
    t.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--samples", type=int, default=15)
    t.add_argument("--min-sample-s", type=float, default=0.02)
    t.add_argument("--max-calls", type=int, default=2000)
    t.add_argument("--max-cases", type=int, help="time at most this many cases (the first, in order)")
    t.add_argument("--time-limit", type=float, help="start no case after this many seconds; the rest are "
                   "recorded as skipped (a soft limit inside the step's hard timeout)")
    t.add_argument("--strict", action="store_true", help="exit 1, not 3, when nothing could be timed")
    t.add_argument("--interpreted-triton", action="store_true",
                   help="let triton_fused run on the CPU under TRITON_INTERPRET=1 (dry runs only; the suite "
                        "itself skips it there)")
    e = sub.add_parser("export", help="JSON lines -> Parquet with GB/s and the copy roofline")
    e.add_argument("rows", nargs="*", type=Path)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.add_argument("--machine", default="", help="default: host name and GPU (or CPU) from --env")
    e.add_argument("--env", type=Path, help="env.json of tools/gpu_report.py env")
    e.add_argument("--commit", default="")
    args = parser.parse_args(argv)
    if args.command == "export":
        return export(args.rows, args.output, args.machine or _machine(args.env), args.commit, _device_info(args.env))
    plan = Plan(args.warmup, args.samples, args.min_sample_s, args.max_calls)
    return time_cases(args, plan)


# --- timing ---

def time_cases(args: argparse.Namespace, plan: Plan) -> int:
    from benchmarks import bench_fused, bench_roofline
    from benchmarks import common as cm

    if args.interpreted_triton:
        _allow_interpreted_triton(cm)
    if args.roofline:
        module, dtypes = bench_roofline, bench_roofline.ROOFLINE_DTYPES
        # the all-core copy and add are CPU measurements (numba), skipped off the CPU
        classes = [c for c in _classes(module) if args.device == "cpu" or not issubclass(c[0], module._AllCores)]
    else:
        module = bench_fused if args.suite == "fused" else importlib.import_module(f"benchmarks.{SUITES[args.suite]}")
        dtypes, classes = tuple(args.dtypes.split(",")), _classes(module)
    values = {"backend": args.backend, "device": args.device}
    cases = list(dict.fromkeys((cls, method, combo) for shape in args.shapes for dtype in dtypes
                               for cls, method in classes
                               for combo in _grid(cls, {**values, "dtype": dtype, "shape": shape, "n": shape[0]})))
    cases = cases[:args.max_cases] if args.max_cases else cases
    counts = {TIMED: 0, SKIPPED: 0, FAILED: 0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for cls, method, combo in cases:
        case_values = dict(combo)
        if args.time_limit is not None and time.monotonic() - started > args.time_limit:
            record = dataclasses.replace(_record(module, cls, method, case_values), status=SKIPPED,
                                         reason=f"not started: the step's time limit ({args.time_limit:g} s) had passed")
        else:
            record = time_case(module, cls, method, case_values, plan)
        counts[record.status] += 1
        with args.out.open("a") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")
        print(_line(record), flush=True)
    print(f"gpu_bench: {counts[TIMED]} timed, {counts[SKIPPED]} skipped, {counts[FAILED]} failed", flush=True)
    if counts[FAILED]:
        return 1
    if not counts[TIMED]:
        return 1 if args.strict else NOTHING_TIMED
    return 0


def _grid(cls: type, given: dict) -> list[tuple]:
    """Every parameter combination of cls, as ((name, value), ...): a parameter `given` names takes its value,
    the others (a preset stack's preset and depth) each of the class's own values."""
    choices = [[given[name]] if name in given else list(values) for name, values in zip(cls.param_names, cls.params)]
    return [tuple(zip(cls.param_names, combo)) for combo in itertools.product(*choices)]


def _record(module, cls: type, method: str, values: dict) -> Record:
    """The case's identity, status FAILED until it is timed or skipped."""
    tokens, hidden = values["shape"] if "shape" in values else (values["n"], values["n"])
    return Record(FAILED, f"{module.__name__.rsplit('.', 1)[-1]}.{cls.__name__}.{method}", method.removeprefix("time_"),
                  values["backend"] if "backend" in cls.param_names else None, values["device"], values["dtype"],
                  tokens, hidden, extra={k: v for k, v in values.items() if k not in RECORD_PARAMS})


def time_case(module, cls: type, method: str, values: dict, plan: Plan) -> Record:
    params = tuple(values[name] for name in cls.param_names)
    base = _record(module, cls, method, values)
    bench = cls()
    started = time.perf_counter()
    try:
        bench.setup(*params)
    except NotImplementedError as exc:  # asv's skip
        return dataclasses.replace(base, status=SKIPPED, reason=_one_line(exc))
    except Exception as exc:  # noqa: BLE001 - a failed case is recorded, the others still run
        traceback.print_exc()
        return dataclasses.replace(base, reason=f"setup: {_one_line(exc)}")
    setup_s = time.perf_counter() - started
    try:
        timed = getattr(bench, method)
        call = lambda: timed(*params)  # noqa: E731 - the timed method, synchronised, as asv calls it
        samples, calls = _samples(call, None, plan, values["device"])
        pipelined = None
        if all(hasattr(bench, a) for a in ("fn", "args", "sync")):
            pipelined, _ = _samples(lambda: bench.fn(*bench.args), bench.sync, plan, values["device"])
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return dataclasses.replace(base, reason=f"timing: {_one_line(exc)}", setup_s=setup_s)
    finally:
        if hasattr(bench, "teardown"):
            bench.teardown(*params)
    return dataclasses.replace(base, status=TIMED, time_s=statistics.median(samples), time_s_min=min(samples),
                               samples=len(samples), calls_per_sample=calls, setup_s=setup_s,
                               time_s_pipelined=None if pipelined is None else statistics.median(pipelined))


def _samples(call, sync, plan: Plan, device: str = "cpu") -> tuple[list[float], int]:
    """Seconds per call: plan.samples samples of `calls` calls each (device_timing.sample_seconds: CUDA events
    after an L2 flush on a GPU). sync=None: each call synchronises itself; else sync(the last result) once per
    sample, after calls issued back to back."""
    def run(n: int) -> float:
        def calls() -> None:
            result = None
            for _ in range(n):
                result = call()
            if sync is not None:
                sync(result)
        return dt.sample_seconds(device, calls)

    for _ in range(plan.warmup):
        run(1)
    one = run(1)
    calls = max(1, min(plan.max_calls, math.ceil(plan.min_sample_s / max(one, 1e-9))))
    return [run(calls) / calls for _ in range(plan.samples)], calls


def _classes(module) -> list[tuple[type, str]]:
    """(class, time_ method) in definition order, as asv discovers them: public classes with a time_ method."""
    found = []
    for name, cls in vars(module).items():
        if not inspect.isclass(cls) or name.startswith("_") or cls.__module__ != module.__name__:
            continue
        found += [(cls, m) for m in dir(cls) if m.startswith("time_") and callable(getattr(cls, m))]
    return found


def _allow_interpreted_triton(cm) -> None:
    """benchmarks/common.py refuses triton_fused on the CPU (its interpreter is for tests, not timing); a dry
    run wants the same code path through the kernels' bench callable anyway, so load it there."""
    original = getattr(cm, "_fused_backend", None)
    if original is None:
        print("gpu_bench: benchmarks.common has no _fused_backend; triton_fused stays skipped on the CPU")
        return

    def fused_backend(name: str, device: str):
        if name == "triton_fused" and device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return cm.load(name, device)
        return original(name, device)

    cm._fused_backend = fused_backend


def _line(r: Record) -> str:
    what = f"{r.benchmark} backend={r.backend} {r.device} {r.dtype} {r.tokens}x{r.hidden}" + "".join(
        f" {k}={v}" for k, v in r.extra.items())
    if r.status != TIMED:
        return f"{r.status.upper()} {what}: {r.reason}"
    pipe = "" if r.time_s_pipelined is None else f", back to back {r.time_s_pipelined * 1e3:.4f} ms"
    return (f"TIMED {what}: {r.time_s * 1e3:.4f} ms/call (median of {r.samples} x {r.calls_per_sample} calls"
            f"{pipe}; setup {r.setup_s:.1f} s)")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple(tuple(int(n) for n in part.split("x")) for part in text.split(",") if part)  # type: ignore
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes are TOKENSxHIDDEN, comma separated (8192x4096,8192x8192), "
                                         f"got {text!r}") from None


# --- export ---

def export(paths: list[Path], output: Path, machine: str, commit: str, device_info: str = "") -> int:
    """The rows `resconf bench-export` writes (reports/bench_export.py: its row, GB/s and copy roofline), plus
    the pipelined columns: the same rows computed from the back-to-back time."""
    import pyarrow as pa

    from resconf.conformance.results import write_parquet_atomic
    from resconf.reports import bench_export as bx

    records = [Record(**json.loads(line)) for p in paths if p.is_file() for line in p.read_text().splitlines()
               if line.strip()]
    timed = [r for r in records if r.status == TIMED]
    if not timed:
        print(f"gpu_bench: no timed case in {', '.join(map(str, paths))}", file=sys.stderr)
        return 1
    run = _AsvRun(machine, commit, f"gpu-check-py{sys.version_info.major}.{sys.version_info.minor}",
                  datetime.now(timezone.utc))
    rows = bx._with_roofline([_bench_row(bx, run, r, r.time_s) for r in timed])
    back_to_back = [r for r in timed if r.time_s_pipelined is not None]
    pipelined = dict(zip(map(id, back_to_back),
                         bx._with_roofline([_bench_row(bx, run, r, r.time_s_pipelined) for r in back_to_back])))
    table = []
    for record, row in zip(timed, rows):
        p = pipelined.get(id(record))
        table.append({**dataclasses.asdict(row), "time_s_pipelined": record.time_s_pipelined,
                      "gbps_pipelined": p and p.gbps, "roofline_gbps_pipelined": p and p.roofline_gbps,
                      "roofline_fraction_pipelined": p and p.roofline_fraction, "setup_s": record.setup_s,
                      "device_info": device_info or None})
    schema = pa.schema(list(bx.SCHEMA) + [pa.field(n, pa.float64()) for n in EXTRA_COLUMNS]
                       + [pa.field("device_info", pa.string())],
                       metadata={**bx.SCHEMA.metadata, b"resconf_bench_source": b"tools/gpu_bench.py"})
    write_parquet_atomic(pa.Table.from_pylist(table, schema=schema), output)
    print(f"gpu_bench: wrote {len(rows)} rows to {output}")
    return 0


@dataclass(frozen=True)
class _AsvRun:
    """What bench_export reads of an asv results file (asv.results.Results) to make a row: this run's."""

    machine: str
    commit_hash: str
    env_name: str
    date: datetime  # bench_export's row takes the commit's date; here, the run's

    @property
    def params(self) -> dict:
        return {"machine": self.machine}


def _bench_row(bx, run: _AsvRun, r: Record, time_s: float):
    """A timed case as `resconf bench-export` makes a row of an asv result (its roofline columns empty)."""
    shape = {} if "n" in r.extra else {"shape": (r.tokens, r.hidden)}  # a matmul's size is its n
    params = {"backend": r.backend, "device": r.device, "dtype": r.dtype, **shape, **r.extra}
    return bx._row(run, run.date, r.benchmark, r.op,
                   {k: v for k, v in params.items() if v is not None}, time_s, {"repeat": r.samples})


def _device_info(env_json: Path | None) -> str:
    """The GPU's name, driver and clocks (device_timing.describe) as env.json recorded them; "" on the CPU."""
    info = json.loads(env_json.read_text()) if env_json and env_json.is_file() else {}
    return dt.describe(info.get("gpu_info") or {})


def _machine(env_json: Path | None) -> str:
    """The host name and what ran the benchmarks: the GPU torch saw, else the CPU."""
    info = json.loads(env_json.read_text()) if env_json and env_json.is_file() else {}
    return f"{socket.gethostname()}: {info.get('gpu') or platform.processor() or platform.machine()}"


# Beyond `resconf bench-export`'s columns (its readers ignore them): the back-to-back timing and the setup time;
# and `device_info`, the GPU's name, driver and clocks (a string column).
EXTRA_COLUMNS = ("time_s_pipelined", "gbps_pipelined", "roofline_gbps_pipelined", "roofline_fraction_pipelined",
                 "setup_s")


if __name__ == "__main__":
    raise SystemExit(main())

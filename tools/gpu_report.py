"""The conformance and reporting half of tools/gpu-check.sh: environment, one backend's check, merge, summary.

  python tools/gpu_report.py env --device cuda -o WORK/env.json [--strict]
  python tools/gpu_report.py check --backend torch --device cuda --output WORK/check-torch.parquet [--strict] -- ARGS
  python tools/gpu_report.py merge WORK/check-*.parquet -o OUT/conformance.parquet
  python tools/gpu_report.py summary --work WORK --out OUT --mode gpu --device cuda --seconds 312 --budget 480

`check` runs `resconf check` (as `python -m resconf.conformance.cli check`, which needs no console script)
for one backend, then exits 0 only if the backend ran: a backend skipped whole (it cannot run on the device)
exits 77, or 1 with --strict (on the GPU machine every backend asked for must run there). Exit 77 is what
tools/gpu-check.sh records as a skipped step. `summary` writes summary.txt: every step with its outcome,
conformance outcomes per backend, the throughput table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks`, at the repository root
from benchmarks import device_timing as dt  # noqa: E402  (imports no framework, nor resconf)

SKIPPED_WHOLE = 77  # exit status: nothing ran (automake's "skipped"; tools/gpu-check.sh records a skipped step)
PACKAGES = ("numpy", "torch", "triton", "jax", "jaxlib", "numba", "liger-kernel", "hypothesis", "pytest",
            "pytest-timeout", "pytest-xdist", "pyarrow", "setuptools", "resconf")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, passthrough = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="gpu_report.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("env", help="versions, devices; --strict: fail when torch sees no GPU on --device cuda")
    e.add_argument("--device", required=True)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.add_argument("--strict", action="store_true")
    c = sub.add_parser("check", help="resconf check for one backend; arguments after -- go to it")
    c.add_argument("--backend", required=True)
    c.add_argument("--device", required=True)
    c.add_argument("--output", type=Path, required=True)
    c.add_argument("--strict", action="store_true", help="exit 1, not 3, when the backend was skipped whole")
    m = sub.add_parser("merge", help="per-backend results files -> one")
    m.add_argument("inputs", nargs="+", type=Path)
    m.add_argument("-o", "--output", type=Path, required=True)
    s = sub.add_parser("summary", help="write OUT/summary.txt")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--mode", required=True)
    s.add_argument("--device", required=True)
    s.add_argument("--seconds", type=float, default=0.0)
    s.add_argument("--budget", type=float, default=0.0)
    args = parser.parse_args(own)
    if args.command == "env":
        return env(args.device, args.output, args.strict)
    if args.command == "check":
        return check(args.backend, args.device, args.output, args.strict, passthrough)
    if args.command == "merge":
        return merge(args.inputs, args.output)
    text = summary(args.work, args.out, args.mode, args.device, args.seconds, args.budget)
    (args.out / "summary.txt").write_text(text)
    print(text)
    return 0


# --- env ---

def env(device: str, output: Path, strict: bool) -> int:
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable, "packages": {}}
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    problems = []
    try:
        import torch
        info["torch_cuda"] = torch.version.cuda or ""
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as exc:  # noqa: BLE001 - recorded, judged below
        info["torch_error"] = str(exc)[:300]
    try:
        import jax
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as exc:  # noqa: BLE001
        info["jax_error"] = str(exc)[:300]
    info["gpu_info"] = dt.gpu_info()  # name, driver, clocks: the export's device_info (tools/gpu_bench.py)
    info["nvidia_smi"] = dt.describe(info["gpu_info"]) or "not available (no nvidia-smi, or it saw no GPU)"
    if device == "cuda" and not info.get("cuda_available"):
        problems.append("torch sees no CUDA device")
    if device == "cuda" and not any("cuda" in d.lower() or "gpu" in d.lower() for d in info.get("jax_devices", [])):
        info["jax_note"] = "jax sees no GPU: check-jax and bench-jax will say why"
    info["problems"] = problems
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 1 if problems and strict else 0


def env_line(info: dict) -> str:
    pk = info.get("packages", {})
    gpu = info.get("gpu") or "no GPU seen by torch"
    if info.get("nvidia_smi") and "not available" not in info["nvidia_smi"]:
        gpu = info["nvidia_smi"]
    versions = ", ".join(f"{n} {pk[n]}" for n in ("torch", "triton", "jax", "numba", "liger-kernel") if n in pk)
    return f"machine: {gpu}; python {info.get('python', '?')}, {versions}; jax devices: " \
           f"{', '.join(info.get('jax_devices', [])) or info.get('jax_error', '?')}"


# --- check ---

def check(backend: str, device: str, output: Path, strict: bool, rest: list[str]) -> int:
    # --no-require-device: a backend that skips the device is judged below (skipped whole, or failed if strict)
    cmd = [sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", backend, "--device", device,
           "--no-require-device", "--output", str(output), *rest]
    print("+ " + " ".join(cmd), flush=True)
    status = subprocess.call(cmd)
    if status != 0:
        return status
    if not output.is_file():
        print(f"gpu_report: resconf check exited 0 but wrote no {output}", file=sys.stderr)
        return 1
    import pyarrow.parquet as pq
    rows = [r for r in pq.read_table(output, columns=["backend", "outcome", "message"]).to_pylist()
            if r["backend"] == backend]
    counts = Counter(r["outcome"] for r in rows)
    if counts["passed"] or counts["xfailed"]:
        return 0
    reasons = sorted({r["message"] for r in rows if r["outcome"] == "skipped"})[:3]
    print(f"gpu_report: backend {backend} ran nothing on {device}: {'; '.join(reasons) or 'no rows'}", flush=True)
    return 1 if strict or not rows else SKIPPED_WHOLE


def merge(inputs: list[Path], output: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from resconf.conformance.results import COVERAGE_KEY, write_parquet_atomic
    tables = [pq.read_table(p) for p in inputs if p.is_file()]
    if not tables:
        print("gpu_report: no conformance results to merge", file=sys.stderr)
        return 1
    coverage: dict = {}
    for t in tables:
        coverage |= json.loads((t.schema.metadata or {}).get(COVERAGE_KEY, b"{}"))
    merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    write_parquet_atomic(merged, output, {COVERAGE_KEY: json.dumps(coverage, sort_keys=True)})
    print(f"gpu_report: {merged.num_rows} rows of {len(tables)} files -> {output}")
    return 0


# --- summary ---

def summary(work: Path, out: Path, mode: str, device: str, seconds: float, budget: float) -> str:
    steps = read_steps(work / "steps.tsv")
    bad = [s["name"] for s in steps if s["status"] not in ("passed", "skipped")]
    verdict = (f"FAILED ({len(bad)} of {len(steps)} steps: {', '.join(bad)})" if bad
               else f"PASSED ({len(steps)} steps, {sum(s['status'] == 'skipped' for s in steps)} skipped)")
    lines = [f"resconf GPU check: {verdict}",
             f"mode {mode}, device {device}, {seconds:.0f} s" + (f" of a {budget:.0f} s budget" if budget else "")]
    env_file = work / "env.json"
    if env_file.is_file():
        lines.append(env_line(json.loads(env_file.read_text())))
    conformance = _conformance_rows(work, out)
    records = _bench_records(work)
    lines += ["", "Steps", f"  {'step':<22}{'status':<11}{'time':>7}  note"]
    for s in steps:
        note = "; ".join(n for n in (s["note"], _step_detail(s["name"], work, conformance, records)) if n)
        lines.append(f"  {s['name']:<22}{s['status']:<11}{s['seconds']:>5} s  {note}")
    lines += ["", *conformance_table(conformance, device), "", *throughput_table(out / "bench.parquet", device),
              *_skipped_cases(records), "",
              "files: summary.txt, gpu-check.log (every step's output), "
              + "".join(f"{n}, " for n in ("conformance.parquet", "bench.parquet") if (out / n).is_file())
              + "work.tar.gz (per-step files)"]
    return "\n".join(lines) + "\n"


def read_steps(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    keys = ("name", "status", "seconds", "timeout", "note")
    return [dict(zip(keys, line.split("\t", 4))) for line in path.read_text().splitlines() if line.strip()]


def _conformance_rows(work: Path, out: Path) -> list[dict]:
    import pyarrow.parquet as pq
    paths = [out / "conformance.parquet"] if (out / "conformance.parquet").is_file() else \
        sorted(work.glob("check-*.parquet"))
    cols = ["backend", "device", "property", "config", "dtype", "outcome", "message"]
    return [r for p in paths for r in pq.read_table(p, columns=cols).to_pylist()]


def conformance_table(rows: list[dict], device: str) -> list[str]:
    if not rows:
        return ["Conformance: no results"]
    from resconf.reports.outcomes import SHOWN_OUTCOMES  # the report's order (resconf imports by now)
    lines = [f"Conformance on {device}: cases per backend and outcome",
             f"  {'backend':<16}" + "".join(f"{o:>9}" for o in SHOWN_OUTCOMES)]
    by_backend: dict[str, Counter] = {}
    for r in rows:
        by_backend.setdefault(r["backend"], Counter())[r["outcome"]] += 1
    for backend, counts in sorted(by_backend.items()):
        lines.append(f"  {backend:<16}" + "".join(f"{counts[o]:>9}" for o in SHOWN_OUTCOMES))
    unexpected = [r for r in rows if r["outcome"] in ("failed", "xpassed")]
    for r in unexpected[:20]:
        lines.append(f"  {r['outcome'].upper()} {r['backend']} {r['property']} {r['dtype']} {r['config']}: "
                     f"{(r['message'] or '').splitlines()[0][:160] if r['message'] else ''}")
    if len(unexpected) > 20:
        lines.append(f"  ... {len(unexpected) - 20} more unexpected (conformance.parquet)")
    whole = [r for r in rows if r["property"] == "RUN" and r["outcome"] == "skipped"]
    lines += [f"  {r['backend']} skipped whole: {(r['message'] or '').removeprefix('skipped: ')}" for r in whole]
    return lines


def throughput_table(path: Path, device: str) -> list[str]:
    """The report's own tables (reports/throughput.py: GB/s and % of roofline, small shapes as latency, the
    compute rows), as Markdown, then the back-to-back GB/s that only this run measures."""
    if not path.is_file():
        return ["Throughput: no benchmark results"]
    from resconf.reports.bench_points import short_op
    from resconf.reports.load import load_bench, load_results
    from resconf.reports.markdown import block_md
    from resconf.reports.throughput import machine_tables, rooflines
    import pyarrow.parquet as pq

    rows, _, _ = load_bench(path)
    if not rows:
        return ["Throughput: no timed benchmark in bench.parquet"]
    conformance = path.parent / "conformance.parquet"
    results = load_results([conformance])[0] if conformance.is_file() else []
    roof = rooflines(rows)
    lines = [f"Throughput on {device}: the report's tables (time = median seconds per synchronised call, asv's "
             "measure; on a GPU CUDA events after an L2 flush, benchmarks/device_timing.py)"]
    for machine in sorted({r.machine for r in rows}):
        lines += ["", *(block_md(b) for b in machine_tables(machine, [r for r in rows if r.machine == machine],
                                                             roof, results))]
    piped = [r for r in pq.read_table(path).to_pylist() if r.get("gbps_pipelined") is not None]
    if piped:
        lines += ["", "Back to back (calls issued together, one sync per sample): GB/s, % of the roofline",
                  *(f"  {r['backend'] or '(roofline)':<14}{short_op(r['op']):<23}{r['dtype']:<10}"
                    f"{r['tokens']}x{r['hidden']:<7}{_num(r['gbps_pipelined'], 9, 1)}"
                    f"{_pct(r.get('roofline_fraction_pipelined'))}" for r in piped)]
    return lines


def _bench_records(work: Path) -> dict[str, list[dict]]:
    return {p.stem.removeprefix("bench-"): [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in sorted(work.glob("bench-*.jsonl"))}


def _skipped_cases(records: dict[str, list[dict]]) -> list[str]:
    lines = []
    for name, recs in records.items():
        reasons = Counter(f"{r['status']}: {r['reason']}" for r in recs if r["status"] != "timed")
        lines += [f"  bench-{name}: {n} case(s) {reason}" for reason, n in reasons.items()]
    return ["Benchmark cases not timed:", *lines] if lines else []


def _step_detail(name: str, work: Path, conformance: list[dict], records: dict[str, list[dict]]) -> str:
    if name.startswith("check-"):
        counts = Counter(r["outcome"] for r in conformance if r["backend"] == name.removeprefix("check-"))
        if not counts:
            return ""
        from resconf.reports.outcomes import SHOWN_OUTCOMES  # the report's order (resconf imports by now)
        return ", ".join(f"{counts[o]} {o}" for o in SHOWN_OUTCOMES if counts[o])
    if name.startswith("bench-") and name.removeprefix("bench-") in records:
        counts = Counter(r["status"] for r in records[name.removeprefix("bench-")])
        return ", ".join(f"{counts[s]} {s}" for s in ("timed", "skipped", "failed") if counts[s])
    junit = work / f"{name}.xml"
    if junit.is_file():
        try:
            suites = ET.parse(junit).getroot()
        except ET.ParseError:
            return "junit unreadable"
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        total = Counter()
        for s in suites:
            for key in ("tests", "failures", "errors", "skipped"):
                total[key] += int(s.get(key, 0))
        passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
        return f"{passed} passed, {total['failures']} failed, {total['errors']} errors, {total['skipped']} skipped"
    return ""


def _num(x, width: int, digits: int) -> str:
    return f"{x:>{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def _pct(x) -> str:
    return f"{100 * x:>7.1f}" if x is not None else f"{'-':>7}"


if __name__ == "__main__":
    raise SystemExit(main())

"""`resconf check`: run the suite once per backend, each in its own pytest process, and merge the results.

A process per backend isolates them: one that crashes, hangs or kills its interpreter loses only its own
rows (recorded as a failure), and the others' results are still written. Rows stream to a JSON-lines
file per worker, so a killed worker keeps every finished test; the merged table is written atomically.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from backends.registry import BUILTIN, entry_point_names, known_names
from conformance import summary
from conformance.plugin import WORKER_LOAD_FAILED
from conformance.results import ResultRow, rows_from_jsonl, to_table, write_parquet_atomic

SUITE_DIR = Path(__file__).parent

def worker_defaults() -> dict[str, str]:
    """Environment defaults for a worker; the user's own settings win.

    The suite's tensors are tiny: one intra-op thread is faster than two fighting over them, and
    deterministic. JAX compiles every new (configuration, shape, dtype) once, about 0.3-1 s each on this
    class of machine; the `ci` profile draws the same examples every run, so JAX's persistent compile
    cache turns a rerun's compiles into loads."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resconf" / "jax"
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@dataclass(frozen=True)
class CheckOptions:
    backends: tuple[str, ...]
    device: str = "cpu"
    profile: str = "ci"
    output: Path | None = None
    junitxml: Path | None = None
    xfails: tuple[Path, ...] = ()
    skip_xfails: bool = False
    worker_timeout_s: float = 1800.0
    test_timeout_s: float = 600.0
    pytest_args: tuple[str, ...] = ()


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run, decided without importing any framework; None if it may run."""
    if name in BUILTIN:
        missing = [m for m in BUILTIN[name].requires if importlib.util.find_spec(m) is None]
        if missing:
            return (f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
                    f"installed backends: {', '.join(known_names())}")
        return None
    if name in entry_point_names() or ":" in name:
        return None
    return f"unknown backend {name!r}; installed backends: {', '.join(known_names())} (or give package.module:attr)"


def default_output(run_id: str) -> Path:
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return Path("reports") / "results" / f"date={day}" / f"run-{run_id}.parquet"


def run_check(opts: CheckOptions) -> int:
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    output = opts.output or default_output(run_id)
    problems = {name: reason for name in opts.backends if (reason := unavailable_reason(name))}
    for reason in problems.values():
        print(f"resconf: {reason}", file=sys.stderr)
    rows: list[ResultRow] = []
    with tempfile.TemporaryDirectory(prefix="resconf-") as tmp:
        junit_parts = []
        for name in (n for n in opts.backends if n not in problems):
            part = Path(tmp) / f"{len(junit_parts)}.jsonl"
            junit = Path(tmp) / f"{len(junit_parts)}.xml"
            junit_parts.append(junit)
            started = time.monotonic()
            print(f"resconf: checking backend {name} on {opts.device} (profile {opts.profile}) ...", flush=True)
            status, tail = _run_worker(name, opts, run_id, part, junit)
            got = rows_from_jsonl(part)
            rows += got
            elapsed = time.monotonic() - started
            if status == WORKER_LOAD_FAILED:
                problems[name] = tail.strip().splitlines()[-1] if tail.strip() else f"backend {name!r} failed to load"
                print(f"resconf: {problems[name]}", file=sys.stderr)
            elif status not in (0, 1) or not got:
                rows.append(_crash_row(name, opts, run_id, status, tail, elapsed))
            print(f"resconf: backend {name}: {len(got)} cases in {elapsed:.1f} s", flush=True)
        for name, reason in problems.items():
            rows.append(_crash_row(name, opts, run_id, None, reason, 0.0))
        write_parquet_atomic(to_table(rows), output)
        if opts.junitxml:
            _merge_junit(junit_parts, opts.junitxml)
    text = _summary_text(rows, output)
    _write_text_atomic(output.with_suffix(".summary.txt"), text)
    print(text)
    unexpected = [r for r in rows if r.outcome in summary.UNEXPECTED]
    return 1 if unexpected else 0


def _run_worker(name: str, opts: CheckOptions, run_id: str, part: Path, junit: Path) -> tuple[int | None, str]:
    cmd = [sys.executable, "-m", "pytest", str(SUITE_DIR), "-p", "no:cacheprovider", "-q", "--no-header",
           "-rN", "--backend", name, "--device", opts.device, "--profile", opts.profile, "--results-jsonl", str(part),
           "--run-id", run_id, "--junitxml", str(junit), f"--timeout={opts.test_timeout_s:g}",
           "-W", "ignore::RuntimeWarning"]
    cmd += [arg for path in opts.xfails for arg in ("--xfails", str(path))]
    cmd += ["--skip-xfails"] if opts.skip_xfails else []
    cmd += list(opts.pytest_args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.worker_timeout_s,
                              env={**worker_defaults(), **os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-4000:]
        return None, f"worker timed out after {opts.worker_timeout_s:g} s\n{out!r}"
    return proc.returncode, (proc.stdout + proc.stderr)[-4000:]


def _crash_row(name: str, opts: CheckOptions, run_id: str, status: int | None, tail: str, elapsed: float) -> ResultRow:
    """A failed row for a backend whose worker died, hung, collected nothing or could not start."""
    lines = [line for line in tail.strip().splitlines() if line.strip()]
    what = {None: "did not run"}.get(status, f"worker exited with status {status}")
    return ResultRow(run_id=run_id, backend=name, device=opts.device, dtype="-", property="RUN", test="-",
                     config="-", outcome="failed", measured=None, bound=None, comparison="", worst_config="",
                     counterexample="", message=f"{what}: {lines[-1] if lines else 'no output'}"[:500],
                     rerun=f"resconf check --backend {name} --device {opts.device} --profile {opts.profile}",
                     seed="", examples=0, duration_s=elapsed, timestamp=datetime.now(timezone.utc).isoformat())


def _merge_junit(parts: list[Path], target: Path) -> None:
    root = ET.Element("testsuites")
    for part in parts:
        if part.exists():
            tree = ET.parse(part).getroot()
            root.extend(tree.iter("testsuite") if tree.tag == "testsuites" else [tree])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, target)


def _summary_text(rows: list[ResultRow], output: Path) -> str:
    outcomes = {o: sum(r.outcome == o for r in rows) for o in ("passed", "failed", "skipped", "xfailed", "xpassed")}
    parts = [summary.matrix(rows), ""]
    fails = summary.failures(rows)
    if fails:
        parts += ["Unexpected results:", fails, ""]
    parts.append("cases: " + ", ".join(f"{v} {k}" for k, v in outcomes.items()))
    parts.append(f"results: {output}")
    parts.append(f"report:  resconf report {output} --out reports/out")
    return "\n".join(parts)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)

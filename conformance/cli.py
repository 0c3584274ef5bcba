"""The `resconf` command: `check` (the conformance suite), `report`, `bench-export`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from resconf.backends.base import DEVICES
from resconf.backends.registry import DEFAULT_BACKENDS, DEFAULT_GPU_BACKENDS, default_backends
from resconf.conformance.profiles import DEFAULT as DEFAULT_PROFILE, PROFILES

HELP = """resconf: conformance and benchmarks for residual connections.
  resconf check [--backend NAME ...]   run the property suite (default: every installed block backend)
  resconf calibrate [--seeds N]        run correct backends over fresh random seeds: false failures, worst ratios
  resconf merge SHARDS... -o OUT       join the shards of a split run (check --shard K/N), coverage checked
  resconf report RESULTS... --out DIR  turn results (and a benchmark export) into HTML + Markdown
  resconf bench-export                 asv results -> Parquet with GB/s and roofline fractions
  resconf --version                    resconf's version, and the results schema and catalogue it writes"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("--version", "-V"):
        print(version_text())
        return 0
    if command == "check":
        return check_main(rest)
    if command == "calibrate":
        from resconf.conformance.calibrate import main as calibrate_main
        return calibrate_main(rest)
    if command == "merge":
        from resconf.conformance.merge import main as merge_main
        return merge_main(rest)
    if command == "report":
        from resconf.reports.cli import main as report_main
        return report_main(rest)
    if command == "bench-export":
        from resconf.reports.bench_export import main as export_main
        return export_main(rest)
    print(f"resconf: unknown command {command!r}\n{HELP}", file=sys.stderr)
    return 2


def version_text() -> str:
    from resconf.conformance.provenance import suite_text
    from resconf.conformance.results import SCHEMA_VERSION, SPEC_VERSION
    return f"resconf {suite_text()}, results schema {SCHEMA_VERSION}, property catalogue {SPEC_VERSION}"


def check_main(argv: list[str]) -> int:
    from resconf.conformance.check import run_check
    from resconf.conformance.options import CheckOptions
    from resconf.conformance.shards import DURATIONS_FILE, Shard

    parser = argparse.ArgumentParser(prog="resconf check", description="Run the conformance suite.",
                                     epilog="Arguments after -- go to pytest, e.g. -- -x --lf.")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="built-in name, entry point, or package.module:attr (repeatable; "
                             f"default: the installed ones of {', '.join(DEFAULT_BACKENDS)} on cpu, "
                             f"{', '.join(DEFAULT_GPU_BACKENDS)} on cuda)")
    parser.add_argument("--device", default="cpu", choices=DEVICES,
                        help="cpu (default) or cuda; a backend that does not run there is skipped, with the reason")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES,
                        help="ci: fast, derandomised (default); nightly: 300 examples, saved database replayed first; "
                             "dev: 25 examples; smoke: 4 examples, no shrinking; calibrate: fresh random seeds")
    parser.add_argument("--max-examples", type=int, metavar="N", help="examples per property, overriding the profile's")
    parser.add_argument("--output", type=Path, help="results Parquet (default: reports/results/date=.../run-....parquet)")
    parser.add_argument("--junitxml", type=Path, help="also write JUnit XML here")
    parser.add_argument("--xfails", action="append", default=[], type=Path, metavar="FILE",
                        help="expected-failure file (TOML), on top of the built-in ones (repeatable)")
    parser.add_argument("--skip-xfails", action="store_true", help="ignore every expected-failure entry")
    parser.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per test (default 600)")
    parser.add_argument("--worker-timeout", type=float, metavar="S",
                        help="kill each worker process S seconds after it starts (default: derived from --timeout, "
                             "the profile and the cases it runs; docs/scaling.md)")
    parser.add_argument("-n", "--workers", default="auto", metavar="N",
                        help="worker processes at once (default auto: one per CPU); each backend is split in N "
                             "parts so no core idles; -n 0 or 1: one backend after another, unsplit")
    parser.add_argument("--shard", metavar="K/N", help="run only shard K of N of the selected cases (CI "
                        "matrices: one job per shard, then `resconf merge`)")
    parser.add_argument("--durations-file", type=Path, metavar="FILE",
                        help=f"case durations that balance shards and parts (default {DURATIONS_FILE})")
    parser.add_argument("--store-durations", action="store_true",
                        help="record this run's case durations in the durations file")
    own, _, passthrough = _split_dashdash(argv)
    args = parser.parse_args(own)
    if args.max_examples is not None and args.max_examples < 1:
        parser.error(f"--max-examples must be at least 1, got {args.max_examples}")
    if args.worker_timeout is not None and not args.worker_timeout > 0:
        parser.error(f"--worker-timeout takes seconds above 0, got {args.worker_timeout:g}")
    workers = (os.cpu_count() or 1) if args.workers == "auto" else _count(parser, args.workers)
    if args.shard:
        try:
            Shard.parse(args.shard)
        except ValueError as exc:
            parser.error(str(exc))
    backends = tuple(args.backend) or default_backends(args.device)
    pytest_args = (("-k", args.keyword) if args.keyword else ()) + tuple(passthrough)
    return run_check(CheckOptions(backends=backends, device=args.device, profile=args.profile,
                                  max_examples=args.max_examples, output=args.output,
                                  junitxml=args.junitxml, xfails=tuple(args.xfails), skip_xfails=args.skip_xfails,
                                  test_timeout_s=args.timeout, worker_timeout_s=args.worker_timeout,
                                  pytest_args=pytest_args, workers=workers,
                                  shard=args.shard, durations_file=args.durations_file,
                                  store_durations=args.store_durations))


def _count(parser: argparse.ArgumentParser, text: str) -> int:
    if not text.isdigit():
        parser.error(f"-n/--workers takes a number of processes or 'auto', got {text!r}")
    return int(text)


def _split_dashdash(argv: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], "--", argv[i + 1:]
    return argv, "", []


if __name__ == "__main__":
    sys.exit(main())

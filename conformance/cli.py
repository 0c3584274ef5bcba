"""The `resconf` command: `check` (the conformance suite), `report`, `bench-export`."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from resconf.backends.base import DEVICES
from resconf.backends.modes import ALL, DEFAULT_MODE, MODES
from resconf.backends.registry import DEFAULT_BACKENDS, DEFAULT_GPU_BACKENDS, default_backends
from resconf.conformance.profiles import DEFAULT as DEFAULT_PROFILE, PROFILES

HELP = """resconf: conformance and benchmarks for residual connections.

  resconf check [--backend NAME ...]   run the property suite on the installed
                                       backends (results under .resconf/)
  resconf calibrate [--seeds N]        correct backends over fresh random seeds:
                                       false failures, worst ratios
  resconf merge SHARDS... -o OUT       join the shards of a split run (check
                                       --shard K/N), coverage checked
  resconf report [RESULTS ...]         results and benchmarks as HTML, Markdown
  resconf bench-export                 asv results -> Parquet, GB/s, roofline
  resconf --version                    resconf's version, results schema and
                                       property catalogue

Options of a command: resconf COMMAND --help."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints its whole usage block first), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def seconds(text: str) -> float:
    """--timeout and the like: a finite number of seconds above 0 (0 would take every case as hung)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """A whole-number option's type: refuses what is not a whole number >= minimum."""
    def count(text: str) -> int:
        if not (text.lstrip("-").isdigit() and int(text) >= minimum):
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)
    return count


def workers(text: str) -> int:
    """-n: 'auto' (one per CPU) or a number of processes."""
    return (os.cpu_count() or 1) if text == "auto" else at_least(0)(text)


def mode_name(text: str) -> str:
    """--mode: an execution mode's name (backends/modes.py) or `all`."""
    if text != ALL and text not in MODES:
        raise argparse.ArgumentTypeError(f"unknown mode {text!r}; expected one of {', '.join(MODES)} or {ALL}")
    return text


def keyword(text: str) -> str:
    """-k, compiled by pytest's own parser now: a typo is refused before any worker starts."""
    from _pytest.mark import expression
    try:
        expression.Expression.compile(text)
    except (SyntaxError, getattr(expression, "ParseError", SyntaxError)) as exc:  # ParseError: pytest 8
        detail = getattr(exc, "msg", None) or getattr(exc, "message", None) or str(exc)
        raise argparse.ArgumentTypeError(f"not a pytest -k expression: {text!r}: {detail}") from None
    return text


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
    if command in COMMANDS:
        return command_main(command)(rest)
    print(f"resconf: unknown command {command!r}\n{HELP}", file=sys.stderr)
    return 2


# The other commands by path, as the registry names built-in backends: `report` and `bench-export` live in
# reports/, a layer above conformance/ (docs/architecture.md), so conformance names them and never imports them.
COMMANDS = {
    "calibrate": "resconf.conformance.calibrate:main",
    "merge": "resconf.conformance.merge:main",
    "report": "resconf.reports.cli:main",
    "bench-export": "resconf.reports.bench_export:main",
}


def command_main(command: str) -> Callable[[list[str]], int]:
    module, _, attr = COMMANDS[command].partition(":")
    return getattr(importlib.import_module(module), attr)


def version_text() -> str:
    from resconf.conformance.provenance import suite_text
    from resconf.conformance.results import SCHEMA_VERSION, SPEC_VERSION
    return f"resconf {suite_text()}, results schema {SCHEMA_VERSION}, property catalogue {SPEC_VERSION}"


def check_main(argv: list[str]) -> int:
    from resconf.conformance.check import run_check
    from resconf.conformance.gate import STRENGTHS
    from resconf.conformance.options import CheckOptions
    from resconf.conformance.shards import DURATIONS_FILE, Shard

    parser = Parser(prog="resconf check", description="Run the conformance suite.",
                    epilog="Arguments after -- go to pytest, e.g. -- -x --lf.")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="built-in name, entry point, or package.module:attr (repeatable; "
                             f"default: the installed ones of {', '.join(DEFAULT_BACKENDS)} on cpu, "
                             f"{', '.join(DEFAULT_GPU_BACKENDS)} on cuda)")
    parser.add_argument("--device", choices=DEVICES,
                        help="cpu (default) or cuda; a backend that does not run there is skipped, with the reason")
    parser.add_argument("--require-device", action=argparse.BooleanOptionalAction,
                        help="fail the run when no backend ran on the device, each skipped it (default: on when "
                             "--device is given)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES,
                        help="ci: fast, derandomised, a failure's first example (default); nightly: 300 examples, "
                             "saved database replayed first; dev: 25 examples; smoke: 4 examples; calibrate: fresh "
                             "random seeds")
    parser.add_argument("--mode", dest="modes", action="append", default=[], type=mode_name, metavar="NAME",
                        help="execution mode to run every case in, where the backend claims it (repeatable): "
                             f"{', '.join(MODES)}, or {ALL} for every mode each backend claims; default "
                             f"{DEFAULT_MODE} (docs/spec.md, Execution modes)")
    parser.add_argument("--max-examples", type=at_least(1), metavar="N",
                        help="examples per property, overriding the profile's")
    parser.add_argument("--cover", choices=STRENGTHS, metavar="{pairs,each,all}",
                        help="which cases run: every pair of parameter values (pairs: ci and smoke's default), "
                             "every value once (each: the fastest gate), or every case (all: the other profiles' "
                             "default); every property and dtype runs in each (docs/scaling.md)")
    parser.add_argument("--shrink", action="store_true",
                        help="shrink each failing example to a minimal one (dev and nightly always do; ci, smoke "
                             "and calibrate stop at the first failing example)")
    parser.add_argument("--no-cache", dest="reference_cache", action="store_false",
                        help="compute every oracle result and baseline afresh (default: ci and smoke keep them in "
                             ".resconf/cache/references/, shared by every backend and later run)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="results Parquet (default: .resconf/results/date=.../run-....parquet)")
    parser.add_argument("--junitxml", type=Path, metavar="FILE", help="also write JUnit XML here")
    parser.add_argument("--xfails", action="append", default=[], type=Path, metavar="FILE",
                        help="expected-failure file (TOML), on top of the built-in ones (repeatable)")
    parser.add_argument("--skip-xfails", action="store_true", help="ignore every expected-failure entry")
    parser.add_argument("-k", dest="keyword", type=keyword, metavar="EXPR", help="only tests matching this pytest -k expression")
    parser.add_argument("--timeout", type=seconds, default=600.0, metavar="S", help="seconds allowed per test (default 600)")
    parser.add_argument("--worker-timeout", type=seconds, metavar="S",
                        help="kill each worker process S seconds after it starts (default: derived from --timeout, "
                             "the profile and the cases it runs; docs/scaling.md)")
    parser.add_argument("-n", "--workers", type=workers, default="auto", metavar="N",
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
    if args.shard:
        try:
            Shard.parse(args.shard)
        except ValueError as exc:
            parser.error(str(exc))
    device = args.device or "cpu"
    backends = tuple(args.backend) or default_backends(device)
    pytest_args = (("-k", args.keyword) if args.keyword else ()) + tuple(passthrough)
    require_device = args.device is not None if args.require_device is None else args.require_device
    return run_check(CheckOptions(backends=backends, device=device, profile=args.profile,
                                  modes=tuple(dict.fromkeys(args.modes)) or (DEFAULT_MODE,),
                                  max_examples=args.max_examples, shrink=args.shrink, cover=args.cover,
                                  reference_cache=args.reference_cache, output=args.output,
                                  junitxml=args.junitxml, xfails=tuple(args.xfails), skip_xfails=args.skip_xfails,
                                  test_timeout_s=args.timeout, worker_timeout_s=args.worker_timeout,
                                  pytest_args=pytest_args, workers=args.workers, require_device=require_device,
                                  shard=args.shard, durations_file=args.durations_file,
                                  store_durations=args.store_durations))


def _split_dashdash(argv: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], "--", argv[i + 1:]
    return argv, "", []


if __name__ == "__main__":
    sys.exit(main())

"""`resconf report [RESULTS ...] [--bench BENCH.parquet] [--run RUN_ID ... | --all-runs] [--out DIR]`: index.html
and report.md from conformance results and the benchmark export.

Defaults under .resconf/, where `resconf check` writes: RESULTS .resconf/results (when no --bench either), DIR
.resconf/report. A dot-folder, so that a flat-layout project's `pip install -e .` finds no extra package.

Exit status: 0 when the report was written from at least one readable input (unreadable ones are listed on
stderr, one line each, and on the page); 2 when there is nothing to read (no inputs, or none readable; the
page is still written then, saying why) or --run names a run the inputs do not hold (nothing written);
1 when DIR cannot be written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import build_document, write_report
from .load import load_inputs
from .runs import RunSelection, UnknownRun
from .spec_index import SPEC_URL
from resconf.conformance.home import HOME

EXIT_OK, EXIT_UNWRITABLE, EXIT_NOTHING_READABLE = 0, 1, 2
DEFAULT_RESULTS, DEFAULT_OUT = HOME / "results", HOME / "report"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resconf report", description="Write index.html (one self-contained page) "
                                "and report.md from conformance results and a benchmark export.")
    p.add_argument("results", nargs="*", type=Path, metavar="RESULTS",
                   help=f"conformance results: Parquet files, or directories holding them (default: {DEFAULT_RESULTS}, "
                        "where `resconf check` writes, unless --bench is given)")
    p.add_argument("--bench", type=Path, metavar="BENCH.parquet", help="the benchmark export (reports/bench_export.py)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"where index.html and report.md go (default: {DEFAULT_OUT})")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--run", action="append", default=[], metavar="RUN_ID", dest="runs",
                      help="show this run (repeatable); default: the newest run of each backend and device")
    runs.add_argument("--all-runs", action="store_true", help="add every run's results together")
    p.add_argument("--spec-url", default=SPEC_URL, metavar="URL",
                   help="where property IDs link to, anchors appended (default: the page's own catalogue "
                        "section, which works from disk; e.g. https://github.com/OWNER/resconf/blob/COMMIT/docs/spec.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.results and args.bench is None:
        if not DEFAULT_RESULTS.is_dir():
            print(f"resconf report: no input: {DEFAULT_RESULTS} (where `resconf check` writes) does not exist here; "
                  f"give results files (RESULTS ...) and/or --bench BENCH.parquet", file=sys.stderr)
            return EXIT_NOTHING_READABLE
        args.results = [DEFAULT_RESULTS]
    inputs = load_inputs(args.results, args.bench)
    for bad in inputs.unreadable:
        print(f"resconf report: skipped {bad.path}: {bad.reason}", file=sys.stderr)
    try:
        document = build_document(inputs, RunSelection(tuple(args.runs), args.all_runs), args.spec_url)
    except UnknownRun as exc:
        print(f"resconf report: {exc}", file=sys.stderr)
        return EXIT_NOTHING_READABLE
    try:
        html_path, _ = write_report(document, args.out)
    except OSError as exc:
        print(f"resconf report: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNWRITABLE
    if not inputs.results and not inputs.bench:
        print(f"resconf report: nothing readable among the inputs; wrote {html_path} saying so", file=sys.stderr)
        return EXIT_NOTHING_READABLE
    print(f"resconf report: wrote {html_path} and {args.out / 'report.md'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

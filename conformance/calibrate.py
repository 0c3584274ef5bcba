"""`resconf calibrate`: do correct backends pass everywhere? The suite runs with hypothesis randomised
(fresh seeds every run, structure drawn per example) over many examples, and the rows are read back as
a calibration table: per (backend, property, dtype), the cases and examples run, the false failures and
the worst measured/allowed ratio. Any false failure exits non-zero; a budget is then too tight (or the
backend is not correct), which the table says where.

    resconf calibrate --backend numpy --backend torch --seeds 200 -k "XB or GR"
    OMP_NUM_THREADS=2 resconf calibrate --backend torch --seeds 50     # another BLAS blocking
    resconf calibrate --backend torch --mode autocast --mode fp32_residual --seeds 200
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from resconf.backends.modes import ALL, DEFAULT_MODE
from resconf.conformance.catalogue import property_order
from resconf.conformance.home import HOME


@dataclass
class Cell:
    """One (backend, property, dtype, mode): what ran, what failed, and the closest call."""

    cases: int = 0
    examples: int = 0
    false_failures: int = 0
    not_run: int = 0
    expected_failures: int = 0
    worst: float = -math.inf  # measured / allowed (>= properties: allowed / measured); > 1 is a failure
    worst_case: str = ""


def ratio(row: dict) -> float | None:
    """How much of its allowance a case used: 1 is the edge. None for exact (bitwise) comparisons."""
    measured, bound, how = row["measured"], row["bound"], row["comparison"]
    if measured is None or bound is None or how not in ("<=", ">="):
        return None
    if how == ">=":
        measured, bound = bound, measured
    if bound == 0:
        return 0.0 if measured <= 0 else math.inf
    return measured / bound


def table(rows: list[dict]) -> dict[tuple[str, str, str, str], Cell]:
    cells: dict[tuple[str, str, str, str], Cell] = defaultdict(Cell)
    for row in rows:
        if row["outcome"] == "skipped":
            continue
        cell = cells[(row["backend"], row["property"], row["dtype"], row.get("mode") or DEFAULT_MODE)]
        cell.cases += 1
        cell.examples += row["examples"]
        # A case the harness never ran (a killed worker, an interrupt) says nothing about the budgets.
        not_run = row["outcome"] == "failed" and str(row.get("message", "")).startswith("not run")
        cell.not_run += not_run
        cell.false_failures += row["outcome"] in ("failed", "xpassed") and not not_run
        cell.expected_failures += row["outcome"] == "xfailed"
        r = ratio(row)
        if r is not None and r > cell.worst and row["outcome"] != "xfailed":
            cell.worst, cell.worst_case = r, f"{row['test'].rsplit('::', 1)[-1]} {row['worst_config']}"
    return cells


def render(cells: dict[tuple[str, str, str, str], Cell]) -> str:
    lines = [f"{'backend':<16} {'property':<8} {'dtype':<9} {'mode':<13} {'cases':>5} {'examples':>8} {'false':>5} "
             f"{'xfail':>5} {'worst':>6}  worst case"]
    for (backend, prop, dtype, mode), c in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][3],
                                                                                property_order(kv[0][1]), kv[0][2])):
        worst = "exact" if c.worst == -math.inf else f"{c.worst:.3g}"
        lines.append(f"{backend:<16} {prop:<8} {dtype:<9} {mode:<13} {c.cases:>5} {c.examples:>8} "
                     f"{c.false_failures:>5} {c.expected_failures:>5} {worst:>6}  {c.worst_case[:60]}")
    lines.append("worst: the largest measured/allowed over all examples (1 = at the edge of the allowance; "
                 "'exact': bitwise properties)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from resconf.backends.registry import DEFAULT_BACKENDS, default_backends
    from resconf.conformance.check import run_check
    from resconf.conformance.cli import Parser, at_least, keyword, mode_name
    from resconf.conformance.options import CheckOptions

    parser = Parser(prog="resconf calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="a correct backend to calibrate against (repeatable; default: the installed ones "
                             f"of {', '.join(DEFAULT_BACKENDS)})")
    parser.add_argument("--seeds", type=at_least(1), default=100, metavar="N",
                        help="examples per case (default 100)")
    parser.add_argument("--mode", dest="modes", action="append", default=[], type=mode_name, metavar="NAME",
                        help=f"execution mode to calibrate, where the backend claims it (repeatable; {ALL}: every "
                             f"mode; default {DEFAULT_MODE})")
    parser.add_argument("-k", dest="keyword", type=keyword, metavar="EXPR",
                        help="only tests matching this pytest -k expression")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="results Parquet (default: .resconf/calibration/latest.parquet)")
    args = parser.parse_args(argv)
    backends = tuple(args.backend) or default_backends()
    output = args.output or HOME / "calibration" / "latest.parquet"
    status = run_check(CheckOptions(backends=backends, profile="calibrate", max_examples=args.seeds, output=output,
                                    modes=tuple(dict.fromkeys(args.modes)) or (DEFAULT_MODE,),
                                    pytest_args=("-k", args.keyword) if args.keyword else ()))
    if status == 2 or not output.is_file():  # refused before any work, or the results could not be written
        return status or 1
    cells = table(pq.read_table(output).to_pylist())
    print("\nCalibration (hypothesis randomised, fresh seeds):\n" + render(cells))
    false = sum(c.false_failures for c in cells.values())
    print(f"false failures: {false}" + ("" if false else " (every correct backend passed every case)"))
    not_run = sum(c.not_run for c in cells.values())
    if not_run:
        print(f"not run: {not_run} cases (the harness stopped them; not counted as false failures; see the summary)")
    return 1 if false or not_run or status else 0

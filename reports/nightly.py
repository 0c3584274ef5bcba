"""The nightly view: every benchmark at a machine's newest point against its previous point, judged by statistics.

Two rules, both needed before a change is called real (thresholds measured by an A/A run, docs/benchmarks.md):
- a test that the two points differ, together with a ratio of medians beyond MIN_EFFECT: the points differ,
  and by enough to matter. Where each point's rounds are recorded (reports/sample_rounds.py), the round (one
  process) is the unit: Welch's t test on the rounds' log medians, since two processes of the same code can
  differ by 1.5x; else a Mann-Whitney U test on the recorded samples (asv run --record-samples), two-sided;
- where the machine has HISTORY_MIN earlier points, the new median's z-score against the last HISTORY_RUNS
  medians must pass Z_LIMIT too: a machine that drifts from night to night (a shared runner) moves its own
  history as much, so the drift does not read as a regression (conbench's rule).
A benchmark that failed at either point is "errored", never "slower"; too few samples, or rules that disagree,
are "ambiguous" (nvbench's AMBG): rerun it with the row's command.
"""
from __future__ import annotations

import itertools
import math
import re
import shlex
import statistics
from dataclasses import dataclass

from .bench_points import ordered_points, point_of
from .load import BenchRow

FASTER, SLOWER, SAME, AMBIGUOUS, ERRORED = "faster", "slower", "same", "ambiguous", "errored"
ALPHA = 0.001  # the U test's p-value below which two sample sets differ
MIN_EFFECT = 0.25  # and their medians' ratio must pass 1 + MIN_EFFECT (slower) or 1 / (1 + MIN_EFFECT) (faster)
MIN_SAMPLES = 7  # per point: with 6 a side the exact U test's smallest p is 2 / C(12, 6) = 0.002 > ALPHA
# Where each point's rounds (processes) are recorded, at least MIN_ROUNDS of them, the unit is the round: Welch's t
# on their log medians at ALPHA_ROUNDS (a t test with 3 rounds a side has 2 to 4 degrees of freedom; the U test
# could not reach below 0.1 there)
MIN_ROUNDS, ALPHA_ROUNDS = 3, 0.01
HISTORY_RUNS, HISTORY_MIN, Z_LIMIT = 10, 5, 3.0

Key = tuple[str, str, str]  # (machine, benchmark, params)


@dataclass(frozen=True)
class Verdict:
    machine: str
    row: BenchRow  # the newest point's row (its failed row when it failed)
    before: tuple[str, str]  # (commit, date)
    after: tuple[str, str]
    verdict: str
    ratio: float | None  # median after / median before
    p_value: float | None
    z_score: float | None  # None: fewer than HISTORY_MIN earlier points
    why: str

    def rerun(self) -> str:
        """asv continuous on just this parameter combination, interleaved, the two commits built afresh."""
        return (f"asv continuous --split -a rounds=4 --bench {shlex.quote(asv_selector(self.row.benchmark, self.row.params))} "
                f"{self.before[0][:12]} {self.after[0][:12]}")


def classify(before: BenchRow | None, after: BenchRow | None, history: list[float]) -> tuple[str, float | None,
                                                                                              float | None, float | None, str]:
    """(verdict, ratio, p, z, why) for one benchmark; None or a NaN time: it failed at that point."""
    for row, where in ((after, "the newest point"), (before, "the previous point")):
        if row is not None and math.isnan(row.time_s):
            return ERRORED, None, None, None, f"failed at {where} (asv recorded no time)"
    if before is None or after is None:
        where = "the newest point" if after is None else "the previous point"
        return AMBIGUOUS, None, None, None, f"not timed at {where} (skipped there, or not in that run)"
    ratio = after.time_s / before.time_s
    few = min(len(before.sample_times), len(after.sample_times))
    if few < MIN_SAMPLES:
        return AMBIGUOUS, ratio, None, None, f"{few} recorded sample(s) at a point, {MIN_SAMPLES} needed (--record-samples)"
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return AMBIGUOUS, ratio, None, None, "the U test needs scipy: pip install 'resconf[report]'"
    units = round_medians(before), round_medians(after)
    if None in units:
        p, alpha, test = float(mannwhitneyu(before.sample_times, after.sample_times, alternative="two-sided").pvalue), \
            ALPHA, "the U test's"
    else:
        p, alpha, test = rounds_p_value(*units), ALPHA_ROUNDS, f"{len(units[0])} vs {len(units[1])} rounds'"
    z = _z_score(after.time_s, history)
    direction = SLOWER if ratio > 1 + MIN_EFFECT else FASTER if ratio < 1 / (1 + MIN_EFFECT) else SAME
    if direction == SAME:
        return SAME, ratio, p, z, f"medians within x{1 + MIN_EFFECT:g}"
    if p >= alpha:
        return AMBIGUOUS, ratio, p, z, f"x{ratio:.2f} but {test} p = {p:.2g} >= {alpha:g}"
    if z is not None and abs(z) < Z_LIMIT:
        return AMBIGUOUS, ratio, p, z, (f"{test} p = {p:.2g} < {alpha:g}, but |z| = {abs(z):.1f} < {Z_LIMIT:g} "
                                        f"against this machine's history")
    return direction, ratio, p, z, f"{test} p = {p:.2g} < {alpha:g}" + ("" if z is None else f", z = {z:+.1f}")


def round_medians(row: BenchRow) -> list[float] | None:
    """The median of each round (process) of a point, where the rounds are recorded (reports/sample_rounds.py)
    and there are MIN_ROUNDS of them; else None (the samples are then taken as independent)."""
    counts = row.sample_rounds
    if len(counts) < MIN_ROUNDS or sum(counts) != len(row.sample_times) or min(counts) < 1:
        return None
    ends = list(itertools.accumulate(counts))
    return [statistics.median(row.sample_times[end - n:end]) for n, end in zip(counts, ends)]


def rounds_p_value(before: list[float], after: list[float]) -> float:
    """Welch's two-sided t test on the rounds' log medians: the process is the unit, so a difference no larger
    than between two processes of the same code is no evidence (nor is one round's luck)."""
    from scipy.stats import ttest_ind

    a, b = [math.log(t) for t in before], [math.log(t) for t in after]
    if statistics.pvariance(a) == statistics.pvariance(b) == 0.0:  # identical rounds: t is 0/0 or infinite
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def _z_score(value: float, history: list[float]) -> float | None:
    if len(history) < HISTORY_MIN:
        return None
    spread = statistics.stdev(history)
    return math.copysign(math.inf, value - statistics.fmean(history)) if spread == 0 else (
        (value - statistics.fmean(history)) / spread)


def nightly(rows: list[BenchRow], failed: list[BenchRow] = ()) -> list[Verdict]:
    """A verdict per benchmark (machine, benchmark, params) present at a machine's newest point or the one before."""
    every = [*rows, *failed]
    points = ordered_points(every)
    by_key: dict[Key, dict[tuple[str, str], BenchRow]] = {}
    for r in every:
        by_key.setdefault((r.machine, r.benchmark or r.op, r.params or r.case + r.backend), {})[point_of(r)] = r
    verdicts = []
    for (machine, _, _), at in sorted(by_key.items()):
        mine = points[machine]
        if len(mine) < 2 or not {mine[-1], mine[-2]} & set(at):
            continue
        before, after = at.get(mine[-2]), at.get(mine[-1])
        history = [at[p].time_s for p in mine[:-1][-HISTORY_RUNS:] if p in at and not math.isnan(at[p].time_s)]
        verdict, ratio, p, z, why = classify(before, after, history)
        verdicts.append(Verdict(machine, after or before, mine[-2], mine[-1], verdict, ratio, p, z, why))
    return verdicts


def asv_selector(benchmark: str, params: str) -> str:
    """The regex asv's --bench matches against one combination: `name('torch', 'cpu', 'float32', (8192, 4096))`."""
    values = [v for _, _, v in (kv.partition("=") for kv in params.split(";") if kv)]
    return "^" + re.escape(f"{benchmark}({', '.join(map(_asv_repr, values))})").replace("\\ ", " ") + "$"


def _asv_repr(value: str) -> str:
    """asv writes parameter values as repr(): 'torch', (8192, 4096), 4."""
    if re.fullmatch(r"\d+(x\d+)+", value):
        return repr(tuple(int(n) for n in value.split("x")))
    return value if value.isdigit() else repr(value)


VERDICT_STATUS = {SLOWER: "fail", FASTER: "pass", SAME: "", AMBIGUOUS: "skip", ERRORED: "xfail"}


def nightly_blocks(found: list[Verdict]) -> list:
    """A sentence counting the verdicts (`nightly`'s), then the table with a rerun command per row (none: no blocks)."""
    from .bench_points import point_label
    from .document import Cell, Paragraph, Table

    if not found:
        return []
    counts = ", ".join(f"{sum(v.verdict == k for v in found)} {k}" for k in (SLOWER, FASTER, SAME, AMBIGUOUS, ERRORED))
    intro = Paragraph(f"Nightly: each benchmark at its machine's newest point against the previous one ({counts}). "
                      f"Slower or faster needs a Mann-Whitney U test on the recorded samples at p < {ALPHA:g}, "
                      f"medians apart by more than x{1 + MIN_EFFECT:g}, and, where the machine has {HISTORY_MIN} "
                      f"earlier points, |z| >= {Z_LIMIT:g} against its last {HISTORY_RUNS}; thresholds from an A/A "
                      "run (docs/benchmarks.md). A failed benchmark is errored, never slower. The ratio column "
                      "describes the change; it is no verdict on its own (a load that moves makes ratios of 2 "
                      "between two runs of the same code).")
    table = Table("Nightly comparison (ratio: median time after / before, a description, not a verdict; rerun: the "
                  "two commits, interleaved)",
                  ("machine", "op", "dtype", "shape", "backend", "from", "to", "ratio", "p", "z", "verdict", "why",
                   "rerun"),
                  tuple((Cell(v.machine), Cell(v.row.op), Cell(v.row.dtype), Cell(v.row.case), Cell(v.row.backend),
                         Cell(point_label(v.before)), Cell(point_label(v.after)),
                         Cell("-" if v.ratio is None else f"x{v.ratio:.2f}"),
                         Cell("-" if v.p_value is None else f"{v.p_value:.2g}"),
                         Cell("-" if v.z_score is None else f"{v.z_score:+.1f}"),
                         Cell(v.verdict, VERDICT_STATUS[v.verdict]), Cell(v.why), Cell(v.rerun()))
                        for v in sorted(found, key=lambda v: (list(VERDICT_STATUS).index(v.verdict), v.machine,
                                                              v.row.op, v.row.case, v.row.backend))))
    return [intro, table]


def main(argv: list[str] | None = None) -> int:
    """`python -m resconf.reports.nightly EXPORT.parquet [--mutant NAME=BASE]`: each verdict, then the count of
    each (an A/A check). --mutant: at the newest point, backend NAME's rows stand in for BASE's (a slowed copy
    of BASE, benchmarks/slowed.py), so BASE's verdict is the mutant's against BASE at the point before."""
    import argparse
    import dataclasses
    import sys
    from pathlib import Path

    from .load import load_bench

    parser = argparse.ArgumentParser(prog="python -m resconf.reports.nightly")
    parser.add_argument("export", type=Path)
    parser.add_argument("--mutant", metavar="NAME=BASE")
    args = parser.parse_args(argv)
    rows, bad, failed = load_bench(args.export)
    for b in bad:
        print(f"unreadable: {b.path}: {b.reason}", file=sys.stderr)
    if args.mutant:
        name, base = args.mutant.split("=", 1)
        newest = {m: points[-1] for m, points in ordered_points(rows).items()}
        stand_in = [dataclasses.replace(r, backend=base, params=r.params.replace(f"backend={name}", f"backend={base}"))
                    for r in rows if r.backend == name and point_of(r) == newest[r.machine]]
        rows = [r for r in rows if r.backend != name and not (r.backend == base and point_of(r) == newest[r.machine])]
        rows += stand_in
    found = nightly(rows, failed)
    for v in found:
        ratio = "-" if v.ratio is None else f"x{v.ratio:.2f}"
        print(f"{v.verdict:9s} {ratio:7s} {v.row.op} {v.row.backend} {v.row.dtype} {v.row.case}: {v.why}")
    print(" ".join(f"{k}={sum(v.verdict == k for v in found)}" for k in VERDICT_STATUS), f"of {len(found)}")
    return 0 if found else 1


if __name__ == "__main__":
    raise SystemExit(main())

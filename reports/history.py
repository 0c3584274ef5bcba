"""Time per backend across commits/dates, with regressions marked.

A regression is a time more than REGRESSION_FACTOR times the same case's time at the previous point on the
same machine: asv continuous's rule (a commit against its parent) applied along the whole series. A time of one
sample (asv --quick) is not a measurement, so a pair of points with one is not compared; the page says how many.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter

from . import sections
from .bench_points import backend_label, case_order, format_time, ordered_points, point_label, point_of, short_op
from .document import Cell, Figure, Paragraph, Section, Table
from .load import BenchRow
from .nightly import nightly_blocks
from .plotting import colour, draw_png, legend_entries, shared_legend

REGRESSION_FACTOR = 1.3  # the documented factor (docs/benchmarks.md); the one place the report reads it from
MAX_TICKS = 6  # commit labels that fit under a panel; a longer series labels every k-th point

Series = tuple[str, str, str, str, str, str]  # (machine, device, op, dtype, case, backend)


@dataclass(frozen=True)
class Regression:
    series: Series
    before: tuple[str, str]  # (commit, date)
    after: tuple[str, str]
    time_before: float
    time_after: float

    @property
    def ratio(self) -> float:
        return self.time_after / self.time_before


def series_of(rows: list[BenchRow]) -> dict[Series, dict[tuple[str, str], float]]:
    """series -> point -> time (the fastest, if a point holds the case twice)."""
    found: dict[Series, dict[tuple[str, str], float]] = defaultdict(dict)
    for r in rows:
        times = found[(r.machine, r.device, r.op, r.dtype, r.case, r.backend)]
        times[point_of(r)] = min(r.time_s, times.get(point_of(r), float("inf")))
    return found


def series_order(s: Series) -> tuple:
    return (*s[:4], case_order(s[4]), s[5])


def single_sampled(rows: list[BenchRow]) -> set[tuple[Series, tuple[str, str]]]:
    """(series, point) whose time is one sample (asv --quick)."""
    return {((r.machine, r.device, r.op, r.dtype, r.case, r.backend), point_of(r)) for r in rows if r.single_sample}


def consecutive(rows: list[BenchRow]) -> list[tuple[Series, tuple[str, str], tuple[str, str], dict]]:
    """Every (series, point before, point after, its times) along each machine's points."""
    points = ordered_points(rows)
    pairs = []
    for series, times in sorted(series_of(rows).items(), key=lambda item: series_order(item[0])):
        seen = [p for p in points[series[0]] if p in times]
        pairs += [(series, before, after, times) for before, after in zip(seen, seen[1:])]
    return pairs


def regressions(rows: list[BenchRow], factor: float = REGRESSION_FACTOR) -> list[Regression]:
    single = single_sampled(rows)
    return [Regression(series, before, after, times[before], times[after])
            for series, before, after, times in consecutive(rows)
            if times[after] > factor * times[before] and not {(series, before), (series, after)} & single]


def uncompared(rows: list[BenchRow]) -> int:
    """How many consecutive pairs hold a single-sample time, and so were not compared."""
    single = single_sampled(rows)
    return sum(bool({(s, before), (s, after)} & single) for s, before, after, _ in consecutive(rows))


def regression_table(found: list[Regression]) -> Table:
    rows = tuple((*(Cell(t) for t in r.series), Cell(point_label(r.before)), Cell(point_label(r.after)),
                  Cell(format_time(r.time_before)), Cell(format_time(r.time_after)), Cell(f"x{r.ratio:.2f}", "fail"))
                 for r in found)
    return Table(f"Regressions: slower than x{REGRESSION_FACTOR} the previous point",
                 ("machine", "device", "op", "dtype", "shape", "backend", "from", "to", "time before", "time after",
                  "ratio"), rows)


def tick_indices(count: int) -> list[int]:
    """At most MAX_TICKS points, evenly spaced back from the newest one."""
    step = max(1, -(-(count - 1) // (MAX_TICKS - 1)))
    return list(range(count - 1, -1, -step))[::-1]


def axis_label(point: tuple[str, str]) -> str:
    """"a1b2c3d\n11-21": short enough for a tick; the tables carry the full commit and date."""
    commit, date = point
    return "\n".join(p for p in (commit[:7], date[5:10]) if p) or "-"


def history_figure(machine: str, device: str, op: str, rows: list[BenchRow], found: list[Regression],
                   backends: list[str], points: list[tuple[str, str]]) -> Figure:
    """Panels per (dtype, shape): time against point, a line per backend, regressions circled in red."""
    series = series_of(rows)
    panels = sorted({(s[3], s[4]) for s in series}, key=lambda p: (p[0], case_order(p[1])))
    marked = {(r.series, r.after) for r in found}

    def draw(fig: MplFigure, axes: list[Axes]) -> None:
        for ax, (dtype, case) in zip(axes, panels):
            for s, times in sorted(series.items(), key=lambda item: series_order(item[0])):
                if (s[3], s[4]) != (dtype, case):
                    continue
                xs = [i for i, p in enumerate(points) if p in times]
                ax.plot(xs, [times[points[i]] for i in xs], "-o", markersize=3, linewidth=1.2,
                        color=colour(backends.index(s[5])), label=backend_label(s[5]))
                bad = [i for i in xs if (s, points[i]) in marked]
                if bad:
                    ax.plot(bad, [times[points[i]] for i in bad], "o", markersize=10, markerfacecolor="none",
                            markeredgecolor="red", markeredgewidth=1.5,
                            label=f"regression: > x{REGRESSION_FACTOR} the previous point")
            ax.set_ylim(bottom=0)  # linear from zero: a x1.5 step looks like one
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: format_time(y) if y > 0 else "0"))
            shown = tick_indices(len(points))
            ax.set_xticks(shown, [axis_label(points[i]) for i in shown], fontsize=6.5)
            ax.set_ylabel("time per call", fontsize=9)
            ax.set_title(f"{dtype}, shape {case}", fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, alpha=0.3)
        entries = legend_entries(axes)  # backends in name order, the regression marker last
        shared_legend(fig, {k: entries[k] for k in sorted(entries, key=lambda k: (k.startswith("regression"), k))})
        fig.suptitle(f"{short_op(op)} on {machine} ({device})", fontsize=11)

    return Figure(f"{op}: time per call across commits on {machine} ({device}), lower is better.",
                  draw_png(len(panels), draw))


def history_section(rows: list[BenchRow], failed: list[BenchRow] = ()) -> Section:
    title = sections.title(sections.HISTORY)
    points = ordered_points(rows)
    if not any(len(p) > 1 for p in points.values()):
        return Section(title, (Paragraph("The benchmark data holds one commit per machine: nothing to compare "
                                         "over time yet."),))
    found = regressions(rows)
    verdict = (f"{len(found)} regression{'s' * (len(found) != 1)}" if found else "No regression") + (
        f" beyond x{REGRESSION_FACTOR} the previous point (commit or date) on the same machine.")
    skipped = uncompared(rows)
    if skipped:
        verdict += (f" {skipped} pair{'s' * (skipped != 1)} of points not compared: one of the two times is a single "
                    "sample (asv run --quick), a smoke test rather than a measurement.")
    blocks: list = [Paragraph(verdict)]
    if found:
        blocks.append(regression_table(found))
    blocks += nightly_blocks(rows, list(failed))
    backends = sorted({r.backend for r in rows})
    groups: dict[tuple[str, str, str], list[BenchRow]] = defaultdict(list)
    for r in rows:
        groups[(r.machine, r.device, r.op)].append(r)
    for (machine, device, op), mine in sorted(groups.items()):
        if any(len(times) > 1 for times in series_of(mine).values()):
            blocks.append(history_figure(machine, device, op, mine, found, backends, points[machine]))
    return Section(title, tuple(blocks))

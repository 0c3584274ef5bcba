"""Time per backend across commits/dates, with the nightly verdicts marked.

The one judgement of a change is the nightly view's (reports/nightly.py: a U test on the recorded samples, a
minimum effect, the machine's history): its table follows the sentence counting the verdicts, and each
benchmark it calls slower is circled in red at the newest point. A ratio of two medians is no verdict on a
machine whose load moves (an A/A run read 2.2x there, docs/benchmarks.md), so the ratio is only a column of
that table, described as such; the x1.3 table of asv continuous's rule is not drawn beside it.
"""
from __future__ import annotations

from collections import defaultdict

from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter

from . import sections
from .bench_points import backend_label, case_order, format_time, ordered_points, point_of, short_op
from .document import Figure, Paragraph, Section
from .load import BenchRow
from .nightly import SLOWER, Verdict, nightly, nightly_blocks
from .plotting import colour, draw_png, legend_entries, shared_legend

MAX_TICKS = 6  # commit labels that fit under a panel; a longer series labels every k-th point

Series = tuple[str, str, str, str, str, str]  # (machine, device, op, dtype, case, backend)


def series_of(rows: list[BenchRow]) -> dict[Series, dict[tuple[str, str], float]]:
    """series -> point -> time (the fastest, if a point holds the case twice)."""
    found: dict[Series, dict[tuple[str, str], float]] = defaultdict(dict)
    for r in rows:
        times = found[(r.machine, r.device, r.op, r.dtype, r.case, r.backend)]
        times[point_of(r)] = min(r.time_s, times.get(point_of(r), float("inf")))
    return found


def series_order(s: Series) -> tuple:
    return (*s[:4], case_order(s[4]), s[5])


def slower_points(verdicts: list[Verdict]) -> set[tuple[Series, tuple[str, str]]]:
    """(series, newest point) of every benchmark the nightly view calls slower."""
    return {((v.machine, v.row.device, v.row.op, v.row.dtype, v.row.case, v.row.backend), v.after)
            for v in verdicts if v.verdict == SLOWER}


def tick_indices(count: int) -> list[int]:
    """At most MAX_TICKS points, evenly spaced back from the newest one."""
    step = max(1, -(-(count - 1) // (MAX_TICKS - 1)))
    return list(range(count - 1, -1, -step))[::-1]


def axis_label(point: tuple[str, str]) -> str:
    """"a1b2c3d\n11-21": short enough for a tick; the tables carry the full commit and date."""
    commit, date = point
    return "\n".join(p for p in (commit[:7], date[5:10]) if p) or "-"


def history_figure(machine: str, device: str, op: str, rows: list[BenchRow], marked: set,
                   backends: list[str], points: list[tuple[str, str]]) -> Figure:
    """Panels per (dtype, shape): time against point, a line per backend, nightly "slower" circled in red."""
    series = series_of(rows)
    panels = sorted({(s[3], s[4]) for s in series}, key=lambda p: (p[0], case_order(p[1])))

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
                            label="slower: the nightly verdict")
            ax.set_ylim(bottom=0)  # linear from zero: a x1.5 step looks like one
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: format_time(y) if y > 0 else "0"))
            shown = tick_indices(len(points))
            ax.set_xticks(shown, [axis_label(points[i]) for i in shown], fontsize=6.5)
            ax.set_ylabel("time per call", fontsize=9)
            ax.set_title(f"{dtype}, shape {case}", fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, alpha=0.3)
        entries = legend_entries(axes)  # backends in name order, the verdict's marker last
        shared_legend(fig, {k: entries[k] for k in sorted(entries, key=lambda k: (k.startswith("slower"), k))})
        fig.suptitle(f"{short_op(op)} on {machine} ({device})", fontsize=11)

    return Figure(f"{op}: time per call across commits on {machine} ({device}), lower is better.",
                  draw_png(len(panels), draw))


def history_section(rows: list[BenchRow], failed: list[BenchRow] = ()) -> Section:
    title = sections.title(sections.HISTORY)
    points = ordered_points(rows)
    if not any(len(p) > 1 for p in points.values()):
        return Section(title, (Paragraph("The benchmark data holds one commit per machine: nothing to compare "
                                         "over time yet."),))
    verdicts = nightly(rows, list(failed))
    blocks: list = nightly_blocks(verdicts) or [Paragraph("No benchmark is timed at a machine's newest point or the "
                                                          "one before: nothing to judge.")]
    backends = sorted({r.backend for r in rows})
    groups: dict[tuple[str, str, str], list[BenchRow]] = defaultdict(list)
    for r in rows:
        groups[(r.machine, r.device, r.op)].append(r)
    for (machine, device, op), mine in sorted(groups.items()):
        if any(len(times) > 1 for times in series_of(mine).values()):
            blocks.append(history_figure(machine, device, op, mine, slower_points(verdicts), backends,
                                         points[machine]))
    return Section(title, tuple(blocks))

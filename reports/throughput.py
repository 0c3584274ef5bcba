"""Throughput at each machine's latest commit: time, GB/s and % of the roofline measured on the same
machine, per operation, dtype and shape, with a bar chart per shape.

GB/s = bytes_moved / time (the formulas in reports/bytes_moved.py); the roofline is the best GB/s of the
streaming kernels (copy, add; one thread and all cores) of the same shape on the same device. The export
computes both and flags every figure above the roofline with the reason found (reports/roofline_flags.py);
when its columns lack them, they are derived here from what is there, and a figure that cannot be derived
prints as "-". No figure above the roofline goes unflagged.
"""
from __future__ import annotations

from collections import defaultdict

from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure

from resconf.conformance.results import ResultRow

from . import sections
from .bench_points import (ONE_SAMPLE, backend_label, case_order, format_samples, format_spread, format_time,
                           ordered_points, point_label, point_of, short_op)
from .bytes_moved import ROOFLINE_OPS
from .document import Cell, Figure, Paragraph, Section, Table
from .kernel_status import kernel_status
from .load import BenchRow
from .roofline_flags import over_roofline_flag
from .plotting import colour, draw_png, legend_entries, shared_legend

Key = tuple[str, str, str]  # (machine, device, case)
OVER_ROOFLINE = "*"  # marks a fraction above 100 %, explained by its flag under the table
ABOVE_ROOFLINE = (
    f"{OVER_ROOFLINE} above 100 % of the roofline, the best of the streaming kernels measured on the same "
    "machine, device and shape: the byte model or the measurement does not hold for that case, so the figure "
    "is not a bandwidth to compare. Each such figure is flagged with the reason found and its byte model:")

ABOVE_MATMUL = (
    f"{OVER_ROOFLINE} above 100 % of the matmul peak, the best n x n matmul measured on the same machine, device "
    "and dtype: one timed call on either side (--quick), or a peak that one n under-measures (a library can run "
    "a stack's matmul shapes faster than the square one). Not a compute figure to compare until a measured "
    "run (without --quick) keeps it.")


SINGLE_SAMPLE = (
    f"{ONE_SAMPLE} one sample: asv run --quick times one call, a smoke test and not a measurement (no warm "
    "caches, no spread). Its GB/s and % of roofline are shown for completeness, not for comparing with the "
    "roofline or another backend; its bar is hatched. Run without --quick for numbers to compare.")
ROOF_HEADROOM = 1.3  # a chart's GB/s axis ends at this multiple of its roofline, whatever its tallest bar
LATENCY = (
    "Small shapes, reported as latency: the bytes these calls move fit in the device's last-level cache (the size "
    "the suite records), so their time is mostly the launch, the synchronisation and the cache (on a GPU the L2 is "
    "flushed before every sample, benchmarks/device_timing.py), not memory bandwidth. They are left out of the GB/s "
    "table, its roofline and its bars, and are compared by time only.")


def format_gbps(gbps: float | None) -> str:
    return "-" if gbps is None else f"{gbps:.1f}"


def format_fraction(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    text = f"{100 * fraction:.0f}%"
    return text + OVER_ROOFLINE if text != "100%" and fraction > 1 else text


def latest_rows(rows: list[BenchRow]) -> list[BenchRow]:
    """The rows of each machine's newest point."""
    latest = {machine: points[-1] for machine, points in ordered_points(rows).items()}
    return [r for r in rows if latest[r.machine] == point_of(r)]


def rooflines(rows: list[BenchRow]) -> dict[Key, float]:
    """(machine, device, case) -> the roofline GB/s: the export's column, else the best streaming kernel's GB/s."""
    found: dict[Key, float] = {}
    for row in rows:
        key = (row.machine, row.device, row.case)
        value = row.roofline_gbps if row.roofline_gbps is not None else (row.gbps if row.op in ROOFLINE_OPS else None)
        if value is not None:
            found[key] = max(value, found.get(key, 0.0))
    return found


def flag_of(row: BenchRow, roofline: float | None) -> str | None:
    """The export's flag; for an export without one, the same rule applied here (no cache size: not judged)."""
    if row.flag:
        return row.flag
    gbps = row.gbps if roofline is None or row.roofline_fraction is None else row.roofline_fraction * roofline
    q75 = row.quartiles[1] if row.quartiles else None
    return over_roofline_flag(row.op, row.bytes_moved, gbps, roofline, row.samples, q75, row.cache_bytes)


def fraction_of(row: BenchRow, roofline: float | None) -> float | None:
    if row.roofline_fraction is not None:
        return row.roofline_fraction
    return row.gbps / roofline if row.gbps is not None and roofline else None


def latency_bound(row: BenchRow) -> bool:
    """A bandwidth-priced row (not a compute one) whose bytes fit in the recorded last-level cache."""
    return (row.gflops is None and row.bytes_moved is not None and row.cache_bytes is not None
            and row.bytes_moved <= row.cache_bytes)


def latency_table(machine: str, rows: list[BenchRow]) -> Table | None:
    mine = sorted((r for r in rows if latency_bound(r)), key=sort_key)
    if not mine:
        return None
    return Table(f"Machine {machine or '-'}: small shapes, time per call (latency; the bytes fit in the last-level "
                 "cache)", ("device", "op", "dtype", "shape", "backend", "time", "spread", "samples", "bytes moved",
                            "cache"),
                 tuple((Cell(r.device), Cell(r.op), Cell(r.dtype), Cell(r.case), Cell(r.backend),
                        Cell(format_time(r.time_s)), Cell(format_spread(r)), Cell(format_samples(r)),
                        Cell(f"{r.bytes_moved / 1e6:.1f} MB"), Cell(f"{r.cache_bytes / 1e6:.1f} MB")) for r in mine))


def machine_tables(machine: str, mine: list[BenchRow], roof: dict[Key, float], results: list[ResultRow]) -> list:
    """One machine's tables and their notes: GB/s, small-shape latency, compute (tools/gpu_report.py prints these)."""
    bandwidth = [r for r in mine if not latency_bound(r)]
    blocks: list = [throughput_table(machine, bandwidth, roof, results)] if bandwidth else []
    note = flag_note(bandwidth, roof)
    if note:
        blocks.append(note)
    latency = latency_table(machine, mine)
    if latency:
        blocks += [latency, Paragraph(LATENCY)]
    compute = compute_table(machine, mine)
    if compute:
        blocks.append(compute)
        if any((r.matmul_fraction or 0) > 1 for r in mine):
            blocks.append(Paragraph(ABOVE_MATMUL))
    if any(r.single_sample for r in mine):
        blocks.append(Paragraph(SINGLE_SAMPLE))
    return blocks


def sort_key(row: BenchRow) -> tuple:
    return (row.machine, row.device, row.op not in ROOFLINE_OPS, row.op, row.dtype, case_order(row.case), row.backend)


def throughput_table(machine: str, rows: list[BenchRow], roof: dict[Key, float], results: list[ResultRow]) -> Table:
    table_rows = []
    for r in sorted(rows, key=sort_key):
        roofline = roof.get((r.machine, r.device, r.case))
        fraction = fraction_of(r, roofline)
        marked = [t + ONE_SAMPLE if r.single_sample and t != "-" else t
                  for t in (format_gbps(r.gbps), format_fraction(fraction))]
        flag = flag_of(r, roofline)
        table_rows.append((Cell(r.device), Cell(r.op), Cell(r.dtype), Cell(r.case), Cell(r.backend),
                           Cell(format_time(r.time_s)), Cell(format_spread(r)), Cell(format_samples(r)),
                           *(Cell(t) for t in marked), Cell(short_flag(flag), "fail" if flag else ""),
                           kernel_status(r.op, r.backend, r.device, r.dtype, results)))
    commit, date = point_of(rows[0])
    return Table(f"Machine {machine or '-'}, {point_label((commit, date))} (time: the median of the samples; "
                 "spread: half their interquartile range, relative to the median)",
                 ("device", "op", "dtype", "shape", "backend", "time", "spread", "samples", "GB/s", "% of roofline",
                  "flag", "conformance"), tuple(table_rows))


def short_flag(flag: str | None) -> str:
    """"over-roofline cache-resident: ..." -> "cache-resident"; the note under the table has the rest."""
    return "-" if not flag else flag.split(":", 1)[0].split(" ", 1)[-1]


def compute_table(machine: str, rows: list[BenchRow]) -> Table | None:
    """The compute-bound rows (preset stacks, the matmul peak): % of the matmul peak beside % of the roofline."""
    mine = sorted((r for r in rows if r.gflops is not None), key=sort_key)
    if not mine:
        return None
    return Table(f"Machine {machine or '-'}: layers against the matmul peak (FLOPs and bytes: docs/benchmarks.md, "
                 "\"FLOPs and the matmul peak\"; the roofline of a stack is its device's at the largest shape)",
                 ("device", "op", "dtype", "shape", "backend", "time", "GFLOP/s", "% of matmul peak", "GB/s",
                  "% of roofline"),
                 tuple((Cell(r.device), Cell(r.op), Cell(r.dtype), Cell(r.case), Cell(r.backend),
                        Cell(format_time(r.time_s)), Cell(f"{r.gflops:.1f}"), Cell(format_fraction(r.matmul_fraction)),
                        Cell(format_gbps(r.gbps)), Cell(format_fraction(r.roofline_fraction))) for r in mine))


def flag_note(rows: list[BenchRow], roof: dict[Key, float]) -> Paragraph | None:
    """ABOVE_ROOFLINE, then each flagged row with its whole flag; None when nothing is flagged."""
    lines = [f"{r.op} {r.dtype} {r.case} {r.backend}: {flag}" for r in sorted(rows, key=sort_key)
             if (flag := flag_of(r, roof.get((r.machine, r.device, r.case))))]
    return Paragraph(" ".join([ABOVE_ROOFLINE, *(f"({i}) {line}." for i, line in enumerate(lines, 1))])) if lines else None


def draw_bars(ax: Axes, rows: list[BenchRow], backends: list[str]) -> None:
    """GB/s per (op, dtype) group, one bar per backend present, the bars centred on their group's tick."""
    groups = sorted({(r.op, r.dtype) for r in rows})
    members = {g: sorted((r for r in rows if (r.op, r.dtype) == g), key=lambda r: backends.index(r.backend))
               for g in groups}
    width = min(0.3, 0.8 / max(len(m) for m in members.values()))
    offset = {(g, r.backend): i + (k - (len(m) - 1) / 2) * width
              for i, (g, m) in enumerate(members.items()) for k, r in enumerate(m)}
    for backend in sorted({r.backend for r in rows}, key=backends.index):
        bars = [r for r in rows if r.backend == backend]
        drawn = ax.bar([offset[((r.op, r.dtype), backend)] for r in bars], [r.gbps for r in bars], width,
                       color=colour(backends.index(backend)), label=backend_label(backend))
        for bar, r in zip(drawn, bars):
            if r.single_sample:  # hatched and pale: one call is not a measurement to compare
                bar.set_hatch("///")
                bar.set_alpha(0.45)
        ax.bar_label(drawn, labels=[f"{r.gbps:.1f}" + (ONE_SAMPLE if r.single_sample else "") for r in bars],
                     fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), [f"{short_op(op)}\n{dtype}".replace(" ", "\n") for op, dtype in groups],
                  fontsize=7)


def bar_figure(machine: str, device: str, rows: list[BenchRow], roof: dict[Key, float],
               backends: list[str]) -> Figure:
    """One panel per shape: bars of GB/s per (op, dtype), one colour per backend, the roofline as a line."""
    cases = sorted({r.case for r in rows}, key=case_order)

    def draw(fig: MplFigure, axes: list[Axes]) -> None:
        for ax, case in zip(axes, cases):
            draw_bars(ax, [r for r in rows if r.case == case], backends)
            roofline = roof.get((machine, device, case))
            ax.set_ylabel("GB/s", fontsize=9)
            ax.set_title(f"{machine} {device}, shape {case}", fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, axis="y", alpha=0.3)
            if roofline is None:
                ax.margins(y=0.12)  # room for the bar labels
                continue
            ax.axhline(roofline, color="black", linestyle="--", linewidth=1.0, label="copy roofline")
            ax.annotate(f"roofline {roofline:.1f} GB/s", (1.0, roofline), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
            # Scaled by the roofline, so every panel reads alike and a bar's height is its share of the copy; a
            # bar past the top (an unfused add can count more GB/s than the copy) keeps its number as a label.
            ax.set_ylim(0, ROOF_HEADROOM * roofline)
            top = ROOF_HEADROOM * roofline
            for bar in (b for b in ax.patches if b.get_height() > top):
                ax.annotate(f"{bar.get_height():.1f} ↑", (bar.get_x() + bar.get_width() / 2, top), xytext=(0, -3),
                            textcoords="offset points", ha="center", va="top", fontsize=7)
        shared_legend(fig, legend_entries(axes), ncols=len(backends) + 1)

    return Figure(f"GB/s per operation and dtype on {machine} ({device}); the dashed line is the copy "
                  "roofline measured on the same device at the same shape (a measured copy, not a physical "
                  f"limit: a bar can pass it). Each panel's axis ends at {ROOF_HEADROOM:g} x its roofline; a "
                  f"hatched bar marked {ONE_SAMPLE} is one sample (--quick).",
                  draw_png(len(cases), draw, columns=1, height_in=3.0))


def throughput_section(rows: list[BenchRow], results: list[ResultRow] = ()) -> Section:
    title = sections.title(sections.THROUGHPUT)
    if not rows:
        return Section(title, (Paragraph("No benchmark export was given or readable (--bench BENCH.parquet)."),))
    latest = latest_rows(rows)
    roof = rooflines(latest)
    backends = sorted({r.backend for r in rows})
    by_machine: dict[str, list[BenchRow]] = defaultdict(list)
    for r in latest:
        by_machine[r.machine].append(r)
    blocks: list = [Paragraph("Each machine at its latest commit. GB/s counts the bytes an ideal single-pass "
                              "kernel must move (docs/benchmarks.md); % of roofline divides it by the GB/s of "
                              "a copy of the same shape on the same machine and device. 'conformance' gives "
                              f"the outcomes, in the runs section {sections.number(sections.MATRIX)} shows, of the properties that check the "
                              "timed kernel on that backend, device and dtype (XB-3 for a fused add+norm, XB-1 "
                              "and XB-2 for a stack).")]
    for machine, mine in sorted(by_machine.items()):
        blocks += machine_tables(machine, mine, roof, list(results))
        for device in sorted({r.device for r in mine}):
            bars = [r for r in mine if r.device == device and r.gbps is not None and r.op not in ROOFLINE_OPS
                    and r.gflops is None and not latency_bound(r)]  # compute rows: compute_table; small: latency
            if bars:
                blocks.append(bar_figure(machine, device, bars, roof, backends))
    if not any(r.gbps is not None for r in rows):
        blocks.append(Paragraph("The export has no GB/s (no gbps or bytes_moved column): times only."))
    return Section(title, tuple(blocks))

"""Figures that come out byte-identical for the same data: matplotlib's Agg renderer, default style, fixed
sizes and dpi, and no timestamp or version in the PNG's metadata.

Figures are matplotlib.figure.Figure objects on their own Agg canvas, not pyplot's, so nothing global (open
figures, the process's selected backend) leaks in or out.
"""
from __future__ import annotations

import io
from typing import Callable

from matplotlib import style
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
WIDTH_IN = 11.0
PANEL_HEIGHT_IN = 3.4
MAX_COLUMNS = 3
LEGEND_ROW_IN = 0.22
# matplotlib's default colour cycle, spelled out so that a series keeps its colour whatever the style.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PNG_METADATA = {"Software": None}  # matplotlib writes its version here otherwise


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def draw_png(count: int, draw: Callable[[Figure, list[Axes]], None], columns: int = MAX_COLUMNS,
             height_in: float = PANEL_HEIGHT_IN) -> bytes:
    """PNG bytes of a figure of `count` panels in rows of at most `columns`, drawn by `draw(fig, axes)` under
    matplotlib's default style (so a user's matplotlibrc cannot change the bytes)."""
    columns = max(1, min(columns, count))
    nrows = -(-count // columns)
    with style.context("default"):
        fig = Figure(figsize=(WIDTH_IN, height_in * nrows), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.subplots(nrows, columns, squeeze=False)
        axes = [ax for row in grid for ax in row]
        for ax in axes[count:]:
            ax.set_visible(False)
        draw(fig, axes[:count])
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


def legend_entries(axes: list[Axes]) -> dict[str, Artist]:
    """label -> artist over all panels, first one wins; labels starting with "_" are matplotlib's "no entry"."""
    entries: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return entries


def shared_legend(fig: Figure, entries: dict[str, Artist], ncols: int = 4) -> None:
    """One legend under all panels (a series keeps its style across panels), the figure grown to hold it."""
    if not entries:
        return
    ncols = min(ncols, len(entries))
    fig.set_figheight(fig.get_figheight() + LEGEND_ROW_IN * -(-len(entries) // ncols) + 0.2)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=ncols, fontsize=8,
               frameon=False)

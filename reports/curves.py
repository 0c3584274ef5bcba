"""The residual stream against theory, plotted from the curves the conformance run recorded.

VG-2 records Var(x_l) against depth with its theory line (the seeds' example: unit-variance embeddings and
192 sublayers writing variance 0.01 give 1 + 192 * 0.01 = 2.92); VG-3 records Var(x_L)/Var(x_0) against L
for `gpt2` and `standard` init with theory; GR-3 records ||grad x_0|| / ||g|| against depth for the
residual stack and the plain one on the same weights, with the float64 oracle's values.
"""
from __future__ import annotations

from resconf.conformance.results import ResultRow

from . import sections
from .document import Cell, Fold, Paragraph, Section, Table
from .recorded_curves import Curve, curves_of, property_order
from .stream_plots import property_figure


def endpoint_table(curves: list[Curve]) -> Table:
    """The numbers behind the plots, for readers of the Markdown: every series at its deepest point."""
    groups: dict[tuple[str, str, str, str, str], list[Curve]] = {}
    for c in curves:
        groups.setdefault((c.property, c.backend, c.device, c.dtype, c.config), []).append(c)
    rows = []
    for key in sorted(groups, key=lambda k: (property_order(k[0]), k[1:])):
        values = ", ".join(f"{c.label} {c.ys[-1]:.3g} at {c.xs[-1]:g}" for c in groups[key] if c.xs)
        rows.append(tuple(Cell(t) for t in (*key, values)))
    return Table("Each recorded series at its deepest point", ("property", "backend", "device", "dtype",
                                                               "configuration", "series: value at depth"),
                 tuple(rows))


def curves_section(rows: list[ResultRow]) -> Section:
    title = sections.title(sections.CURVES)
    curves = [c for r in rows if r.curve_x for c in curves_of(r)]
    if not curves:
        return Section(title, (Paragraph("No recorded curves in the results (properties VG-2, VG-3 and GR-3 "
                                         "record them when they run)."),))
    blocks: list = [Paragraph(GROUPING)]
    for prop in sorted({c.property for c in curves}, key=property_order):
        mine = sorted((c for c in curves if c.property == prop), key=lambda c: (c.dtype, c.config, c.label))
        blocks += property_blocks(prop, mine)
    blocks.append(endpoint_table(curves))
    return Section(title, tuple(blocks))


GROUPING = ("Each property shows one backend's panels (a row per backend, a column per dtype); the other "
            "backends' panels are folded under it, so one screen holds one property. The table at the end gives "
            "every series' last value.")


def property_blocks(prop: str, curves: list[Curve]) -> list:
    """The first backend's figure, then the other backends' in a fold (VG-3 over seven backends and four dtypes
    and two branches is dozens of panels: unfolded they bury the next property)."""
    backends = sorted({c.backend for c in curves})
    first, rest = tuple(backends[:1]), tuple(backends[1:])
    blocks: list = [property_figure(prop, curves, first)]
    if rest:
        folded = property_figure(prop, curves, rest)
        blocks.append(Fold(f"{prop} for the other backends: {', '.join(rest)}", (folded,)))
    return blocks

"""The curves section's figures: one per property, a panel per backend and dtype (dtypes agree closely, so drawn in one
panel they hide each other), theory and oracle lines in black, and the seeds' reference values marked (2.92
at the end of VG-2's theory line; 0.8^80 = 1.8e-8 on GR-3's log axis, whose range is clipped)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D

from .document import Figure
from .drilldown import DTYPE_ORDER, dtype_order
from .log_clip import log_clip
from .plotting import MAX_COLUMNS, colour, draw_png, legend_entries, shared_legend
from .recorded_curves import Curve

LINESTYLES = ("-", "--", ":", "-.")
YLABELS = {"VG-2": "Var(x_l)", "VG-3": "Var(x_L) / Var(x_0)", "GR-3": "||grad x_0|| / ||g||",
           "XB-6": "accumulated rounding error"}
LOG_Y = ("GR-3", "XB-6")
JACOBIAN_NORM, PLAIN_DEPTH = 0.8, 80  # the seeds' vanishing-gradient example: 0.8^80 = 1.8e-8


def sci(value: float) -> tuple[str, int]:
    """1.8e-08 -> ("1.8", -8)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return mantissa, int(exponent)


PLAIN_MANTISSA, PLAIN_EXPONENT = sci(JACOBIAN_NORM ** PLAIN_DEPTH)  # 1.8, -8
CAPTIONS = {
    "VG-2": "Var(x_l) against depth l: the stream's variance grows by the variance of each write "
            "(the seeds' example: unit-variance embeddings, 192 sublayers each writing variance 0.01, "
            "so 1 + 192 x 0.01 = 2.92); on the layer presets, per update u, against the sum of the writes' "
            "expected variances given the stream (the preset's theory line).",
    "VG-3": "Var(x_L) / Var(x_0) against depth L: flat with GPT-2 init (output projections scaled by "
            "1/sqrt(2L)), linear in L with standard init.",
    "GR-3": "||grad x_0|| / ||g|| against depth (log scale), residual against plain on the same weights; "
            f"the grey line has slope log {JACOBIAN_NORM}: a plain stack whose layers have Jacobian norm "
            f"{JACOBIAN_NORM} keeps {JACOBIAN_NORM}^{PLAIN_DEPTH} = {PLAIN_MANTISSA}e{PLAIN_EXPONENT} of the "
            f"gradient after {PLAIN_DEPTH} layers. The residual theory line is sqrt(prod_l (1 + s^2 (C - 2) / "
            "sigma_l^2)), the pre-LN analogue of (1 + beta^2)^(L/2).",
    "XB-6": "The rounding error a 64-layer pre stack accumulates against the update count (log scale): each "
            "update's local error summed, the end-to-end error against the oracle, and the theory line for "
            "independent rounding, sqrt(sum_u ||lambda_u||^2); a bias shared by every update grows linearly away "
            "from it. The fitted growth exponents are in the table below.",
}


def config_parts(config: str) -> dict[str, str]:
    """"branch=linear,init=gpt2" -> {"branch": "linear", "init": "gpt2"}; a value may hold commas."""
    return dict(part.split("=", 1) for part in re.split(r",(?=[A-Za-z_]\w*=)", config) if "=" in part)


def distinguishing(c: Curve, varying: frozenset[str]) -> str:
    """", branch=mlp": the configuration parts that vary in the figure and the curve's label does not say
    (VG-3's label already says its init); such curves get panels of their own."""
    parts = [f"{k}={v}" for k, v in config_parts(c.config).items() if k in varying and v not in c.label]
    return "".join(f", {p}" for p in parts)


def series_key(label: str) -> str:
    """What a reference line refers to: "gpt2 theory" -> "gpt2" <- "gpt2 measured"; "residual (oracle)" ->
    "residual" <- "residual"."""
    words = [w for w in label.lower().split() if w not in ("theory", "measured", "(oracle)", "oracle")]
    return " ".join(words)


@dataclass(frozen=True)
class Styles:
    """Figure-wide styles, so that one legend serves every panel: colour by dtype, line style by series (the
    plain stack dashed after the residual one), references thin and black in their series' line style."""

    dtypes: tuple[str, ...]
    labels: tuple[str, ...]
    varying: frozenset[str]

    @classmethod
    def of(cls, curves: list[Curve]) -> "Styles":
        parts = [config_parts(c.config) for c in curves]
        keys = {k for p in parts for k in p}
        varying = frozenset(k for k in keys if len({p.get(k) for p in parts}) > 1)
        measured = [c for c in curves if not c.is_reference]
        labels = tuple(sorted({c.label for c in measured}, key=lambda label: ("plain" in label, label)))
        return cls(tuple(sorted({c.dtype for c in measured}, key=dtype_order)), labels, varying)

    def dtype_colour(self, dtype: str) -> str:
        """float64, float32, bfloat16, float16 keep one colour in every figure, whichever dtypes it has."""
        known = dtype_order(dtype)[1]
        return colour(known if known < len(DTYPE_ORDER) else len(DTYPE_ORDER) + self.dtypes.index(dtype))

    def linestyle(self, label: str) -> str:
        keys = [series_key(m) for m in self.labels]
        if series_key(label) in keys:
            return LINESTYLES[keys.index(series_key(label)) % len(LINESTYLES)]
        return "--" if "theory" in label.lower() else ":"

    def plot(self, ax: Axes, c: Curve, xs: tuple[float, ...], ys: tuple[float, ...]) -> None:
        if c.is_reference:  # on top and thin: visible where the measured curve agrees with it
            ax.plot(xs, ys, self.linestyle(c.label), color="black", linewidth=0.9, zorder=3, label=c.label)
        else:
            ax.plot(xs, ys, self.linestyle(c.label), color=self.dtype_colour(c.dtype), marker="o",
                    markersize=2.5, linewidth=1.4, label="_measured")

    def legend_proxies(self) -> dict[str, Line2D]:
        """A factored legend: one entry per dtype (colour) and one per series (line style)."""
        proxies = {d: Line2D([], [], color=self.dtype_colour(d), marker="o", markersize=3) for d in self.dtypes}
        proxies.update({label: Line2D([], [], color="grey", linestyle=self.linestyle(label), linewidth=1.4)
                        for label in self.labels})
        return proxies


def _draw_panel(ax: Axes, curves: list[Curve], styles: Styles, log_y: bool) -> None:
    drawn_references: set[str] = set()
    for c in curves:
        xs, ys = c.xs, c.ys
        if log_y:  # a zero (an underflowed plain gradient) has no place on a log axis
            kept = [(x, y) for x, y in zip(xs, ys) if y > 0 and math.isfinite(y)]
            xs, ys = tuple(x for x, _ in kept), tuple(y for _, y in kept)
        if c.is_reference:  # the same theory/oracle line for every dtype: draw it once
            if c.label in drawn_references:
                continue
            drawn_references.add(c.label)
        styles.plot(ax, c, xs, ys)
    if log_y:
        ax.set_yscale("log")


def _annotate_theory_end(ax: Axes, curves: list[Curve]) -> None:
    """Write the theory line's last value beside it (2.92 at l = 192 in the seeds' example)."""
    for c in curves:
        if "theory" in c.label.lower() and c.xs:
            ax.annotate(f"theory {c.ys[-1]:.2f} at {c.xs[-1]:g}", (c.xs[-1], c.ys[-1]),
                        xytext=(-6, 8), textcoords="offset points", ha="right", fontsize=8)
            return


def _reference_slope(ax: Axes, max_depth: float) -> None:
    """y = 0.8^depth, and its value at depth 80 marked: where a plain stack's gradient would be."""
    depths = list(range(0, int(max(max_depth, PLAIN_DEPTH)) + 1))
    ax.plot(depths, [JACOBIAN_NORM ** d for d in depths], "-.", color="grey", linewidth=1.0,
            label=f"${JACOBIAN_NORM}^{{depth}}$ (Jacobian norm {JACOBIAN_NORM} per plain layer)")
    y = JACOBIAN_NORM ** PLAIN_DEPTH
    ax.plot([PLAIN_DEPTH], [y], "o", color="grey", markersize=4)
    text = f"${JACOBIAN_NORM}^{{{PLAIN_DEPTH}}} = {PLAIN_MANTISSA} \\times 10^{{{PLAIN_EXPONENT}}}$"
    ax.annotate(text, (PLAIN_DEPTH, y), xytext=(6, 2), textcoords="offset points", fontsize=8, color="dimgrey")


def grid_columns(panels: list[tuple[str, ...]]) -> int:
    """One column per dtype (2 to 4), so that each row is one backend; otherwise the default grid."""
    dtypes = len({p[2] for p in panels})
    return dtypes if 2 <= dtypes <= 4 else MAX_COLUMNS


def property_figure(property_id: str, curves: list[Curve], backends: tuple[str, ...] | None = None) -> Figure:
    """The panels of `backends` (all by default). Styles and GR-3's clipped range come from every curve of the
    property, so that a figure of some backends and one of the others read alike."""
    curves = [c for c in curves if len(c.xs) > 1]  # a one-point series (XB-6's exponents) is in the table
    styles = Styles.of(curves)
    panels: dict[tuple[str, str, str, str], list[Curve]] = {}
    for c in curves:
        if backends is None or c.backend in backends:
            panels.setdefault((c.backend, c.device, c.dtype, distinguishing(c, styles.varying)), []).append(c)
    order = sorted(panels, key=lambda p: (p[0], p[1], p[3], dtype_order(p[2])))
    log_y = property_id in LOG_Y
    clip = log_clip(curves) if log_y else None

    def draw(fig: MplFigure, axes: list[Axes]) -> None:
        for ax, key in zip(axes, order):
            backend, device, dtype, where = key
            mine = panels[key]
            _draw_panel(ax, mine, styles, log_y)
            if property_id == "GR-3":
                _reference_slope(ax, max(x for c in mine for x in c.xs))
            if log_y:
                if clip.below:  # both ends set: autoscaling would pad the top by as many decades as it clips
                    ax.set_ylim(clip.floor, clip.top * 10)
            elif property_id == "VG-2":
                _annotate_theory_end(ax, mine)
                ax.margins(y=0.12)  # room above the line's end for its label
            ax.set_title(f"{backend} on {device}, {dtype}{where}", fontsize=10)
            ax.set_xlabel("depth", fontsize=9)
            ax.set_ylabel(YLABELS.get(property_id, property_id), fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
        shared_legend(fig, {**styles.legend_proxies(), **legend_entries(axes)}, ncols=4)
        fig.suptitle(property_id, fontsize=11)

    caption = CAPTIONS.get(property_id, f"{property_id}: the recorded curves against depth.")
    caption += " One panel per backend and dtype" + (f" ({', '.join(backends)})." if backends else ".")
    caption += clip.caption() if clip else ""
    return Figure(caption, draw_png(len(order), draw, columns=grid_columns(order)))

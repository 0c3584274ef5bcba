"""How far down a log axis goes: GR-3's plain-stack gradient falls to about 1e-149, and an axis that reached it
would squash every other curve into a line. The axis stops CLIP_DECADES below the largest value, and the
caption says what lies below it."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .recorded_curves import Curve

CLIP_DECADES = 16  # keeps the seeds' 0.8^depth reference line (4e-13 at depth 128) on the plot


@dataclass(frozen=True)
class LogClip:
    """Where a log axis stops, and what falls below it (for the caption)."""

    floor: float
    top: float  # the largest value: the axis ends a little above it
    below: int  # points under the floor
    lowest: float
    labels: tuple[str, ...]  # the series they belong to
    zeros: int  # points at 0 (an underflowed gradient), which no log axis can show

    def caption(self) -> str:
        text = ""
        if self.below:
            text += (f" The y axis is clipped at {self.floor:.0e}, {CLIP_DECADES} decades below the largest value: "
                     f"{self.below} points of {', '.join(self.labels)} lie below it, down to {self.lowest:.1e}, "
                     "and run off the bottom of the plot.")
        if self.zeros:
            text += f" {self.zeros} points equal to 0 (underflow) are left out: a log axis has no 0."
        return text


def log_clip(curves: list[Curve]) -> LogClip:
    values = [(y, c.label) for c in curves for y in c.ys if math.isfinite(y) and y > 0]
    zeros = sum(y == 0 for c in curves for y in c.ys)
    top = max((y for y, _ in values), default=1.0)
    floor = top / 10 ** CLIP_DECADES
    below = [(y, label) for y, label in values if y < floor]
    if not below:  # nothing to clip: the axis keeps matplotlib's own lower limit
        return LogClip(0.0, top, 0, 0.0, (), zeros)
    return LogClip(floor, top, len(below), min(y for y, _ in below), tuple(sorted({lb for _, lb in below})), zeros)

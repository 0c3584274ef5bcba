"""The curves a conformance run recorded (GR-3, VG-2, VG-3, XB-6): a row's parallel lists curve_x, curve_y and
curve_label, regrouped as one series per label."""
from __future__ import annotations

from dataclasses import dataclass

from resconf.conformance.results import ResultRow

FAMILY_ORDER = ("VG", "GR")  # variance first, then gradient, then any other property with curves


@dataclass(frozen=True)
class Curve:
    property: str
    backend: str
    device: str
    dtype: str
    config: str
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]

    @property
    def is_reference(self) -> bool:
        lowered = self.label.lower()
        return "theory" in lowered or "oracle" in lowered


DEPTH_CURVES = ("GR-3", "VG-2", "VG-3", "XB-6")  # curves against depth; BI-5's magnitude sweep is not one


def curves_of(row: ResultRow) -> list[Curve]:
    """The row's parallel (x, y, label) lists as one Curve per label, points sorted by x (depth curves only)."""
    if row.property not in DEPTH_CURVES:
        return []
    points: dict[str, list[tuple[float, float]]] = {}
    for x, y, label in zip(row.curve_x, row.curve_y, row.curve_label):
        points.setdefault(label, []).append((x, y))
    return [Curve(row.property, row.backend, row.device, row.dtype, row.config, label,
                  tuple(x for x, _ in sorted(p)), tuple(y for _, y in sorted(p)))
            for label, p in sorted(points.items())]


def property_order(property_id: str) -> tuple[int, str]:
    fam = property_id.split("-", 1)[0]
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), property_id)

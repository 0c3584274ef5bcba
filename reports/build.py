"""The whole report from the loaded inputs, sections in their fixed order, and the two files written from it."""
from __future__ import annotations

from pathlib import Path

from .curves import curves_section
from .document import Document
from .history import history_section
from .html import render_html
from .load import Inputs
from .markdown import render_markdown
from .matrix import matrix_section
from .metadata import metadata_section
from .runs import RunSelection, select
from .spec_index import SPEC_URL, load_spec
from .spec_section import spec_section
from .throughput import throughput_section

TITLE = "resconf report"
INTRO = ("Conformance and throughput of residual connections, x + F(x), across backends: which properties "
         "each backend keeps (checked against a float64 oracle), how fast its fused add+norm runs against the "
         "memory roofline, and how its residual stream compares with theory.")


def build_document(inputs: Inputs, selection: RunSelection = RunSelection(), spec_url: str = SPEC_URL) -> Document:
    """Raises runs.UnknownRun when `selection` names a run the inputs do not hold."""
    results, bench = list(inputs.results), list(inputs.bench)
    view = select(results, selection)
    shown = list(view.rows)  # every conformance-derived number reads the same runs
    spec = load_spec(spec_url)
    return Document(
        title=TITLE,
        intro=INTRO,
        warnings=tuple(f"{u.path}: {u.reason}" for u in inputs.unreadable),
        sections=(matrix_section(view, results, spec), throughput_section(bench, shown),
                  history_section(bench, list(inputs.bench_failed)), curves_section(shown), metadata_section(inputs, view), spec_section(spec)),
    )


def write_report(document: Document, out: Path) -> tuple[Path, Path]:
    """index.html and report.md in `out` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "index.html", out / "report.md"
    html_path.write_text(render_html(document), encoding="utf-8")
    md_path.write_text(render_markdown(document), encoding="utf-8")
    return html_path, md_path

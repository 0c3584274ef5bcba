"""The conformance matrix (backend x property family) of the runs shown, a legend of the family
codes linked to the catalogue, a property x dtype fold per backend, and every failure with its rerun line."""
from __future__ import annotations

from collections import Counter

from resconf.conformance import catalogue
from resconf.conformance.catalogue import FAMILY_NAMES
from resconf.conformance.results import ResultRow
from resconf.conformance.summary import column

from . import sections
from .document import Cell, Detail, Paragraph, Section, Table
from .drilldown import drilldown
from .outcomes import cell_status, cell_text
from .runs import View

from .spec_index import Spec

FAMILIES = tuple(f.code for f in catalogue.FAMILIES)  # the catalogue's order; unknown ones go after


def family(property_id: str) -> str:
    return property_id.split("-", 1)[0]


def empty_family_text(fam: str, spec: Spec) -> str:
    """A column with no result at all: "not implemented" for a catalogue family with no property yet, else
    not run here."""
    return "not implemented" if fam in spec.not_implemented else "not run"


def matrix_table(rows: list[ResultRow], spec: Spec) -> Table:
    counts: dict[tuple[str, str, str], Counter] = {}
    for row in rows:
        # a backend's cases in another execution mode than eager get their own line ("torch/compile")
        counts.setdefault((column(row), row.device, family(row.property)), Counter())[row.outcome] += 1
    present = {f for _, _, f in counts}
    families = list(FAMILIES) + sorted(present - set(FAMILIES))
    table_rows = []
    for backend, device in sorted({(b, d) for b, d, _ in counts}):
        cells = [Cell(backend), Cell(device)]
        for fam in families:
            c = counts.get((backend, device, fam), Counter())
            cells.append(Cell(cell_text(c), cell_status(c)) if fam in present else Cell(empty_family_text(fam, spec)))
        table_rows.append(tuple(cells))
    return Table("Results per backend and property family (all dtypes together)",
                 ("backend", "device", *families), tuple(table_rows))


def legend_table(families: tuple[str, ...], spec: Spec) -> Table:
    rows = []
    for fam in families:
        href = spec.family_href(fam)
        text = href.split("/")[-1] if spec.url else f"section {sections.number(sections.CATALOGUE)}: {fam}"
        where = Cell(text if href else "-", href=href)
        name = FAMILY_NAMES.get(fam, "not in the catalogue")
        if fam in spec.not_implemented:
            name += ": not implemented yet (the suite has no tests for it)"
        rows.append((Cell(fam), Cell(name), where))
    return Table("Family codes (a property ID in the folds below links to its entry; hover for its statement)",
                 ("code", "family", "catalogue entry"), tuple(rows))


# A failure's numbers and its message can come from two different examples: `measured` is the worst over every
# example (`worst_config` drew it), the message and counterexample are hypothesis' reported example (shrunk,
# or the first that failed under a profile that does not shrink). Each field says which one it is about.
WORST, REPORTED = "worst example", "failing example"
EXAMPLES_NOTE = (f"Each failure's \"{WORST}\" fields are the example with the largest measured value over all "
                 f"examples run; its \"{REPORTED}\" fields are the example hypothesis reported (its minimal one when "
                 "it shrinks, else the first that failed), which its reproduce line replays. They can differ.")


def failure_detail(row: ResultRow) -> Detail:
    fields = [("test", row.test), ("configuration (fixed)", row.config)]
    if row.worst_config:
        fields.append((f"{WORST}: drawn", row.worst_config))
    if row.measured is not None and row.bound is not None:
        over = f" (the largest over {row.examples} examples)" if row.examples else ""
        fields.append((f"{WORST}: measured", f"{row.measured:.4g}, required {row.comparison} {row.bound:.4g}{over}"))
    fields += [(f"{REPORTED}: message", row.message), (f"{REPORTED}: drawn", row.counterexample),
               (f"{REPORTED}: reproduce", row.seed), ("run", row.run_id)]
    return Detail(f"{row.property} failed: {row.backend} on {row.device}, {row.dtype}",
                  tuple((k, v) for k, v in fields if v), row.rerun)


def summary(rows: list[ResultRow]) -> str:
    total = Counter(r.outcome for r in rows)
    runs = len({r.run_id for r in rows})
    return (f"{len(rows)} results from {runs} run{'s' * (runs != 1)}: {cell_text(total)}. "
            "A cell is green when everything that ran passed, red on any failure, amber on an expected "
            "failure (xfailed) or an unexpected pass (xpassed), grey when every case was skipped "
            "(the backend does not claim the feature).")


def failures(view: View, all_rows: list[ResultRow]) -> list:
    failed = sorted((r for r in view.rows if r.outcome == "failed"),
                    key=lambda r: (r.backend, r.device, r.dtype, r.property, r.config, r.test, r.run_id))
    hidden = sum(r.outcome == "failed" for r in all_rows) - len(failed)
    blocks: list = [Paragraph(f"{len(failed)} failure{'s' * (len(failed) != 1)}, each with the command that "
                              f"reruns it. {EXAMPLES_NOTE}" if failed else "No failures.")]
    blocks.extend(failure_detail(r) for r in failed)
    if hidden:
        blocks.append(Paragraph(f"The runs not shown hold {hidden} more failure{'s' * (hidden != 1)} "
                                "(give --all-runs to see them)."))
    return blocks


def matrix_section(view: View, all_rows: list[ResultRow], spec: Spec) -> Section:
    title = sections.title(sections.MATRIX)
    if not view.rows:
        return Section(title, (Paragraph("No conformance results were given or readable."),))
    rows = list(view.rows)
    table = matrix_table(rows, spec)
    blocks = [Paragraph(view.how), Paragraph(summary(rows)), table, legend_table(table.headers[2:], spec)]
    blocks += [Paragraph("Per backend, property by dtype (a backend with a failure starts unfolded):"),
               *drilldown(rows, spec), *failures(view, all_rows)]
    return Section(title, tuple(blocks))

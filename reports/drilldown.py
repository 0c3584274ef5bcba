"""Under the matrix, one fold per backend and device: property x dtype, so a red matrix cell shows which
property in which dtype failed. A fold with a failure starts open."""
from __future__ import annotations

from collections import Counter

from resconf.backends.dtypes import DTYPES
from resconf.conformance.catalogue import property_order
from resconf.conformance.results import ResultRow

from .document import Cell, Fold, Table
from .outcomes import cell_status, cell_text
from .spec_index import Spec

DTYPE_ORDER = DTYPES  # the records' order, widest first; then any other, "-" (the whole backend) last
STATEMENT_CHARS = 90  # the column's cut; the full statement is the property link's hover text


def dtype_order(dtype: str) -> tuple:
    return (dtype == "-", DTYPE_ORDER.index(dtype) if dtype in DTYPE_ORDER else len(DTYPE_ORDER), dtype)


def short(statement: str) -> str:
    return statement if len(statement) <= STATEMENT_CHARS else statement[:STATEMENT_CHARS - 1].rstrip() + "…"


def first_message(rows: list[ResultRow], prop: str) -> str:
    """A row resconf check wrote itself (RUN, GUARD) has no statement: its message says what happened."""
    return min((r.message for r in rows if r.property == prop and r.message), default="")


def property_cell(prop: str, spec: Spec) -> Cell:
    return Cell(prop, href=spec.property_href(prop), title=spec.statements.get(prop, ""))


def backend_table(rows: list[ResultRow], spec: Spec) -> Table:
    counts: dict[tuple[str, str], Counter] = {}
    for row in rows:
        counts.setdefault((row.property, row.dtype), Counter())[row.outcome] += 1
    dtypes = sorted({d for _, d in counts}, key=dtype_order)
    table_rows = []
    for prop in sorted({p for p, _ in counts}, key=property_order):
        statement = spec.statements.get(prop) or first_message(rows, prop)
        cells = [property_cell(prop, spec), Cell(short(statement) or "-", title=statement)]
        for dtype in dtypes:
            c = counts.get((prop, dtype), Counter())
            cells.append(Cell(cell_text(c), cell_status(c)))
        table_rows.append(tuple(cells))
    headers = tuple("no dtype" if d == "-" else d for d in dtypes)  # "-": a row about the whole backend (RUN)
    return Table("Per property and dtype", ("property", "statement", *headers), tuple(table_rows))


def drilldown(rows: list[ResultRow], spec: Spec) -> list[Fold]:
    folds = []
    for backend, device in sorted({(r.backend, r.device) for r in rows}):
        mine = [r for r in rows if (r.backend, r.device) == (backend, device)]
        total = Counter(r.outcome for r in mine)
        folds.append(Fold(f"{backend} on {device}: {cell_text(total)}", (backend_table(mine, spec),),
                          open=bool(total["failed"])))
    return folds

"""The last section: the catalogue's statements, one row per property under its family, so that the page's
property links (reports/spec_index.py) land in the page itself, which works when it is opened from disk."""
from __future__ import annotations

from resconf.conformance import catalogue
from resconf.conformance.results import SPEC_VERSION

from . import sections
from .document import Cell, Paragraph, Section, Table
from .spec_index import Spec, family_heading, page_anchor


def catalogue_table(spec: Spec) -> Table:
    rows = []
    for family in catalogue.FAMILIES:
        name = Cell(family_heading(family), anchor=page_anchor(family.code))
        mine = [p for p in catalogue.PROPERTIES if p.family == family.code]
        if not mine:
            rows.append((name, Cell("-"), Cell("not implemented yet: the suite has no tests for it")))
        for i, prop in enumerate(mine):
            rows.append((name if i == 0 else Cell(""), Cell(prop.id, anchor=page_anchor(prop.id)),
                         Cell(spec.statements.get(prop.id, prop.statement))))
    return Table(f"The property catalogue (spec version {SPEC_VERSION})", ("family", "property", "statement"),
                 tuple(rows))


def spec_section(spec: Spec) -> Section:
    where = (f"Property IDs above link to {spec.url}." if spec.url else
             "Property IDs and family codes above link here, so the links work wherever the page is opened; "
             "give --spec-url to link to a docs/spec.md instead.")
    text = (f"Each property's one-line statement. {where} docs/spec.md has the full catalogue: each property's "
            "domain, tolerance and the mutants it catches.")
    return Section(sections.title(sections.CATALOGUE), (Paragraph(text), catalogue_table(spec)))

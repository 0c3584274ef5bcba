"""Where each property is defined, for the report's links and hover text: each property's one-line statement,
read from the catalogue (conformance/catalogue.py, which tests/test_catalogue.py holds docs/spec.md to), so an
install without docs/ still has them. By default a property ID links to its statement in the page itself (the
catalogue section, reports/spec_section.py), which works wherever the page is opened, from disk too. With
--spec-url it links to the family's heading in that docs/spec.md instead (its GitHub anchor).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from resconf.conformance import catalogue
from resconf.conformance.catalogue import Family, Property

# The default link target: "" is the page's own catalogue section (an address outside the page, root-relative
# or relative, breaks once the page is copied elsewhere, as a CI artifact is); --spec-url gives another
# (e.g. the file on GitHub at a commit).
SPEC_URL = ""


def page_anchor(code: str) -> str:
    """The id of a family's or property's entry in the page's catalogue section: "ID-1" -> "spec-id-1"."""
    return f"spec-{code.lower()}"


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens ("ID: identity at zero"
    -> "id-identity-at-zero"); docs/spec.md's own links use the same form."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def family_heading(family: Family) -> str:
    """The family's section heading in docs/spec.md, without its "## "."""
    return f"{family.code}: {family.heading}"


@dataclass(frozen=True)
class Spec:
    url: str
    family_anchors: dict[str, str] = field(default_factory=dict)  # "ID" -> "id-identity-at-zero"
    statements: dict[str, str] = field(default_factory=dict)  # "ID-1" -> its statement
    not_implemented: tuple[str, ...] = ()  # catalogue families with no property yet

    def family_href(self, family: str) -> str:
        anchor = self.family_anchors.get(family, "")
        if not anchor:
            return ""
        return f"{self.url}#{anchor}" if self.url else f"#{page_anchor(family)}"

    def property_href(self, property_id: str) -> str:
        """Its row in the page's catalogue; at --spec-url, its family's heading (docs/spec.md has the
        properties as rows of one table per family, with no anchor of their own)."""
        if property_id not in self.statements:
            return ""
        return self.family_href(property_id.split("-", 1)[0]) if self.url else f"#{page_anchor(property_id)}"


def load_spec(url: str = SPEC_URL, families: tuple[Family, ...] = catalogue.FAMILIES,
              properties: tuple[Property, ...] = catalogue.PROPERTIES) -> Spec:
    anchors = {f.code: github_anchor(family_heading(f)) for f in families}
    statements = {p.id: p.statement for p in properties}
    empty = tuple(f.code for f in families if not any(p.family == f.code for p in properties))
    return Spec(url, anchors, statements, empty)

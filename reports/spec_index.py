"""Where each property is defined: the catalogue's family headings in docs/spec.md (their GitHub anchors)
and each property's one-line statement, so the report can link a property ID to its entry and show its
statement on hover. Read from the catalogue (conformance/catalogue.py), which tests/test_catalogue.py holds
docs/spec.md to, so an install without docs/ still gets statements, and links to wherever --spec-url says.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from resconf.conformance import catalogue
from resconf.conformance.catalogue import Family, Property

# The default link target: the catalogue's path from the repository root, which resolves wherever the page
# is served with the checkout as its root; --spec-url gives another (e.g. the file on GitHub at a commit).
SPEC_URL = "/docs/spec.md"


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
        return f"{self.url}#{anchor}" if anchor else ""

    def property_href(self, property_id: str) -> str:
        """The property's family heading: the catalogue's properties are rows of one table per family."""
        return self.family_href(property_id.split("-", 1)[0]) if property_id in self.statements else ""


def load_spec(url: str = SPEC_URL, families: tuple[Family, ...] = catalogue.FAMILIES,
              properties: tuple[Property, ...] = catalogue.PROPERTIES) -> Spec:
    anchors = {f.code: github_anchor(family_heading(f)) for f in families}
    statements = {p.id: p.statement for p in properties}
    empty = tuple(f.code for f in families if not any(p.family == f.code for p in properties))
    return Spec(url, anchors, statements, empty)

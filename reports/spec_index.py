"""Where each property is defined: docs/spec.md's family headings (their GitHub anchors) and each property's
one-line statement, so the report can link a property ID to the catalogue and show its statement on hover.

The catalogue is read from the checkout this resconf runs from. An install without docs/ gets no statements
and no links (the page says so), never an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SPEC_PATH = Path(__file__).resolve().parents[1] / "docs" / "spec.md"
# The default link target: the catalogue's path from the repository root, which resolves wherever the page
# is served with the checkout as its root; --spec-url gives another (e.g. the file on GitHub at a commit).
SPEC_URL = "/docs/spec.md"
NOT_IMPLEMENTED_HEADING = "Not yet implemented"

FAMILY_HEADING = re.compile(r"^## ([A-Z]{2,}): ")
PROPERTY_ROW = re.compile(r"^\| ([A-Z]{2,}-\d+) \|")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens ("ID: identity at zero"
    -> "id-identity-at-zero"); docs/spec.md's own links use the same form."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def statement_of(row: str) -> str:
    """The second cell of a catalogue row, as plain text (escaped pipes and code backticks undone)."""
    cells = re.split(r"(?<!\\)\|", row)
    return cells[2].replace("\\|", "|").replace("`", "").strip() if len(cells) > 2 else ""


@dataclass(frozen=True)
class Spec:
    url: str
    family_anchors: dict[str, str] = field(default_factory=dict)  # "ID" -> "id-identity-at-zero"
    statements: dict[str, str] = field(default_factory=dict)  # "ID-1" -> its statement
    not_implemented: tuple[str, ...] = ()  # families the catalogue lists as not yet implemented
    not_implemented_anchor: str = ""

    @property
    def found(self) -> bool:
        return bool(self.family_anchors)

    def family_href(self, family: str) -> str:
        anchor = self.family_anchors.get(family) or (self.not_implemented_anchor if family in self.not_implemented
                                                     else "")
        return f"{self.url}#{anchor}" if anchor else ""

    def property_href(self, property_id: str) -> str:
        """The property's family heading: the catalogue's properties are rows of one table per family."""
        return self.family_href(property_id.split("-", 1)[0]) if property_id in self.statements else ""


def parse_spec(text: str, url: str = SPEC_URL) -> Spec:
    anchors, statements, not_implemented, ni_anchor = {}, {}, [], ""
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            match = FAMILY_HEADING.match(line)
            if match:
                anchors[match.group(1)] = github_anchor(section)
            elif section == NOT_IMPLEMENTED_HEADING:
                ni_anchor = github_anchor(section)
        elif section == NOT_IMPLEMENTED_HEADING and (found := re.match(r"([A-Z]{2,})\b", line)):
            not_implemented.append(found.group(1))
        elif match := PROPERTY_ROW.match(line):
            statements[match.group(1)] = statement_of(line)
    return Spec(url, anchors, statements, tuple(not_implemented), ni_anchor)


def load_spec(url: str = SPEC_URL, path: Path = SPEC_PATH) -> Spec:
    try:
        return parse_spec(path.read_text(encoding="utf-8"), url)
    except OSError:
        return Spec(url)

"""The report as plain data, before it becomes HTML or Markdown.

Every section builds these blocks once; reports/html.py and reports/markdown.py only render them, so the
page and the CI summary cannot disagree about a number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

# How a table cell is coloured: "pass" green, "fail" red, "xfail" amber, "skip" grey, "" uncoloured.
STATUSES = ("", "pass", "fail", "xfail", "skip")


@dataclass(frozen=True)
class Cell:
    text: str
    status: str = ""
    href: str = ""  # the text links there (a property to its entry in docs/spec.md)
    title: str = ""  # shown on hover (the property's one-line statement)
    anchor: str = ""  # an id in the page that links can point at ("#spec-id-1"); HTML only

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"cell status {self.status!r}: expected one of {STATUSES}")


@dataclass(frozen=True)
class Table:
    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def __post_init__(self) -> None:
        bad = [r for r in self.rows if len(r) != len(self.headers)]
        if bad:
            raise ValueError(f"table {self.caption!r}: a row has {len(bad[0])} cells for {len(self.headers)} headers")

    def column(self, header: str) -> list[str]:
        """The texts of one column, top to bottom (what tests compare with the fixtures)."""
        i = self.headers.index(header)
        return [row[i].text for row in self.rows]


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Figure:
    caption: str
    png: bytes  # deterministic bytes: reports/plotting.py strips timestamps and versions


@dataclass(frozen=True)
class Detail:
    """One item that does not fit a table row, e.g. a failure: a title, labelled fields, a command to copy."""

    title: str
    fields: tuple[tuple[str, str], ...]
    command: str = ""


@dataclass(frozen=True)
class Fold:
    """Blocks under a one-line summary, folded unless `open` (<details>: works without a script)."""

    summary: str
    blocks: tuple["Block", ...]
    open: bool = False


Block = Union[Paragraph, Table, Figure, Detail, Fold]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]

    def tables(self) -> list[Table]:
        return [b for b in self.blocks if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]

    def folds(self) -> list[Fold]:
        return [b for b in self.blocks if isinstance(b, Fold)]


@dataclass(frozen=True)
class Document:
    title: str
    intro: str
    warnings: tuple[str, ...]  # inputs that could not be read, shown above everything else
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def section(self, title_prefix: str) -> Section:
        return next(s for s in self.sections if s.title.startswith(title_prefix))

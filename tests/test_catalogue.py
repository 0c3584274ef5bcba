"""The catalogue (conformance/catalogue.py) is what the suite implements and what docs/spec.md says: every
@pytest.mark.property in conformance/ is a catalogue row with that test listed, every row is implemented,
and the document's families, property rows, statements and mutants are the table's. (Its mutants are held to
the mutant runs in tests/test_mutants.py.)"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from resconf.conformance.catalogue import (BLOCKS, FAMILIES, FAMILY_ORDER, FUSED, HARNESS_FAMILIES, PROPERTIES,
                                           TENSOR_PARALLEL)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec.md"


def marked_tests() -> dict[str, set[str]]:
    """Property ID -> "module.function" of every test in conformance/ marked with it."""
    found = defaultdict(set)
    for path in sorted((ROOT / "conformance").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for mark in node.decorator_list:
                    if isinstance(mark, ast.Call) and ast.unparse(mark.func) == "pytest.mark.property":
                        found[mark.args[0].value].add(f"{path.stem}.{node.name}")
    return found


def test_every_marked_test_is_in_the_catalogue_and_every_row_is_implemented():
    marked = marked_tests()
    listed = {p.id: set(p.tests) for p in PROPERTIES}
    assert set(marked) == set(listed), (f"marked in conformance/ but not in the catalogue: "
                                        f"{sorted(set(marked) - set(listed))}; in the catalogue but no test marked "
                                        f"with it: {sorted(set(listed) - set(marked))}")
    for prop, tests in marked.items():
        assert tests == listed[prop], (f"{prop}: conformance/ marks {sorted(tests)}, the catalogue lists "
                                       f"{sorted(listed[prop])}")


def test_rows_are_well_formed():
    ids = [p.id for p in PROPERTIES]
    assert len(ids) == len(set(ids)), f"an ID twice: {sorted(i for i in ids if ids.count(i) > 1)}"
    codes = [f.code for f in FAMILIES]
    assert FAMILY_ORDER == (*codes, *(f.code for f in HARNESS_FAMILIES))
    assert ids == sorted(ids, key=lambda i: (codes.index(i.split("-")[0]), int(i.split("-")[1]))), \
        "rows in the families' order, then by number"
    for p in PROPERTIES:
        assert re.fullmatch(r"[A-Z]{2,}-\d+", p.id) and p.family in codes, f"{p.id}: not FAMILY-N of a known family"
        assert p.domains and set(p.domains) <= {BLOCKS, FUSED, TENSOR_PARALLEL}, f"{p.id}: domains {p.domains}"
        assert "\n" not in p.statement and "`" not in p.statement, f"{p.id}: a statement is one plain line"


# --- docs/spec.md against the table ---

def cells(row: str) -> list[str]:
    """A Markdown table row's cells, as plain text (escaped pipes and code backticks undone)."""
    return [c.replace("\\|", "|").replace("`", "").strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]


def spec_tables(text: str) -> dict[str, list[list[str]]]:
    """"ID: identity at zero" -> the property rows under that heading."""
    tables, heading = {}, ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif re.match(r"^\| [A-Z]{2,}-\d+ \|", line):
            tables.setdefault(heading, []).append(cells(line))
    return tables


def mutants_named(cell: str) -> set[str]:
    """The mutant column's class names; a note in parentheses is not one."""
    return {name.strip() for name in re.sub(r"\([^)]*\)", "", cell).split(",") if name.strip()}


def test_spec_has_the_catalogue_families_rows_statements_and_mutants():
    tables = spec_tables(SPEC.read_text())
    assert list(tables) == [f"{f.code}: {f.heading}" for f in FAMILIES], \
        f"docs/spec.md's property tables sit under {list(tables)}; the catalogue's families are in that order"
    for family in FAMILIES:
        rows = tables[f"{family.code}: {family.heading}"]
        mine = [p for p in PROPERTIES if p.family == family.code]
        assert [r[0] for r in rows] == [p.id for p in mine], f"docs/spec.md's {family.code} rows"
        for row, prop in zip(rows, mine):
            assert row[1].startswith(prop.statement), (f"{prop.id}: docs/spec.md's statement {row[1][:80]!r}... "
                                                        f"does not start with the catalogue's {prop.statement!r}")
            assert mutants_named(row[-1]) == set(prop.mutants), (
                f"{prop.id}: docs/spec.md names mutants {sorted(mutants_named(row[-1]))}, the catalogue "
                f"{sorted(prop.mutants)}")

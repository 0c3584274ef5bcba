"""JUnit XML for `resconf check`: every worker's file merged into one, rows standing in where a worker
wrote none."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from resconf.conformance import summary
from resconf.conformance.results import ResultRow


@dataclass(frozen=True)
class JunitPart:
    """A worker's JUnit file; where there is none (the worker died first, or these are the supervisor's
    own rows), its rows stand in for it."""

    xml: Path | None
    rows: tuple[ResultRow, ...]


def merge_junit(parts: list[JunitPart], target: Path) -> None:
    """One JUnit file: every worker's suites; for a worker that died before writing its file, and for
    the supervisor's own rows (dead cases, RUN, GUARD), a suite made from the rows."""
    root = ET.Element("testsuites")
    for part in parts:
        if part.xml is not None and part.xml.exists():
            tree = ET.parse(part.xml).getroot()
            root.extend(tree.iter("testsuite") if tree.tag == "testsuites" else [tree])
        elif part.rows:
            root.append(_junit_suite(part.rows))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, target)


def _junit_suite(rows: tuple[ResultRow, ...]) -> ET.Element:
    failed = [r for r in rows if r.outcome in summary.UNEXPECTED]
    suite = ET.Element("testsuite", name="resconf", tests=str(len(rows)), failures=str(len(failed)),
                       skipped=str(sum(r.outcome in ("skipped", "xfailed") for r in rows)))
    for row in rows:
        case = ET.SubElement(suite, "testcase", classname=f"{row.backend}.{row.property}",
                             name=row.test if row.test != "-" else row.config, time=f"{row.duration_s:.3f}")
        if row.outcome in summary.UNEXPECTED:
            ET.SubElement(case, "failure", message=row.message).text = row.rerun
        elif row.outcome in ("skipped", "xfailed"):
            ET.SubElement(case, "skipped", message=row.message)
    return suite

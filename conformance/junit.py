"""JUnit XML for `resconf check`: every worker's file merged into one, rows standing in where a worker
wrote none."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from resconf.conformance import summary
from resconf.conformance.outputs import write_atomic
from resconf.conformance.constants import JUNIT_PROPERTIES, junit_suite_name
from resconf.conformance.results import ResultRow


@dataclass(frozen=True)
class JunitPart:
    """A worker's JUnit file; where there is none (the worker died first, or these are the supervisor's
    own rows), its rows stand in for it."""

    xml: Path | None
    rows: tuple[ResultRow, ...]


def merge_junit(parts: list[JunitPart], target: Path) -> None:
    """One JUnit file: every worker's suites; for a worker that died before writing its file, and for
    the supervisor's own rows (dead cases, RUN, GUARD), suites made from the rows, one per backend.
    Valid against the JUnit schema pytest tests itself with (xunit2), plus per-testcase <properties>
    as pytest writes them for record_property (tests/test_junit.py checks both)."""
    suites = []
    for part in parts:
        if part.xml is not None and part.xml.exists():
            tree = ET.parse(part.xml).getroot()
            suites.extend(tree.iter("testsuite") if tree.tag == "testsuites" else [tree])
        else:
            for backend in sorted({r.backend for r in part.rows}):
                suites.append(_junit_suite(tuple(r for r in part.rows if r.backend == backend)))
    root = ET.Element("testsuites")
    root.extend(_one_per_name(suites))
    for total in ("tests", "failures", "errors"):
        root.set(total, str(sum(int(suite.get(total, "0")) for suite in root)))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, ET.tostring(root, encoding="utf-8", xml_declaration=True))


COUNTS = ("tests", "failures", "errors", "skipped")


def _one_per_name(suites: list[ET.Element]) -> list[ET.Element]:
    """A backend split in parts under -n (and the supervisor's own rows) gives several suites of one name:
    one suite each, its testcases in order, its counts and time summed (a CI view then shows one group)."""
    merged: dict[str, ET.Element] = {}
    for suite in suites:
        name = suite.get("name", "")
        if name not in merged:
            merged[name] = suite
            continue
        into = merged[name]
        for count in COUNTS:
            into.set(count, str(int(into.get(count, "0")) + int(suite.get(count, "0"))))
        into.set("time", f"{float(into.get('time', '0')) + float(suite.get('time', '0')):.3f}")
        cases = suite.findall("testcase")
        last = max((i for i, child in enumerate(into) if child.tag in ("testcase", "properties")), default=-1)
        for i, case in enumerate(cases, last + 1):  # before any suite-level system-out (the schema's order)
            into.insert(i, case)
    return list(merged.values())


def _junit_suite(rows: tuple[ResultRow, ...]) -> ET.Element:
    failed = [r for r in rows if r.outcome in summary.UNEXPECTED]
    suite = ET.Element("testsuite", name=junit_suite_name(rows[0].backend), tests=str(len(rows)),
                       failures=str(len(failed)), errors="0",
                       skipped=str(sum(r.outcome in ("skipped", "xfailed") for r in rows)))
    for row in rows:
        name = row.test if row.test != "-" else f"{row.property} {row.config}".removesuffix(" -")
        case = ET.SubElement(suite, "testcase", classname=f"resconf.{row.backend}.{row.property}", name=name,
                             time=f"{row.duration_s:.3f}")
        properties = ET.SubElement(case, "properties")
        values = (row.property, row.backend, row.device, row.dtype, row.config, row.mode)
        for key, value in zip(JUNIT_PROPERTIES, values):
            ET.SubElement(properties, "property", name=key, value=value)
        if row.outcome in summary.UNEXPECTED:
            ET.SubElement(case, "failure", message=row.message).text = row.rerun
        elif row.outcome in ("skipped", "xfailed"):
            ET.SubElement(case, "skipped", message=row.message)
    return suite

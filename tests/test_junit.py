"""`resconf check --junitxml`: valid JUnit that CI test views read, one suite per backend, every testcase
carrying its property, backend, device, dtype and configuration.

Validity is checked against the schema pytest checks its own output with (tests/fixtures/junit-10.xsd,
xunit2). That schema has no <properties> inside <testcase>, which is where pytest's record_property (and so
ours) puts them and where Jenkins and GitLab read them; so the file is checked twice: with those elements
removed against the schema unchanged, and whole against the schema with exactly that one addition.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

xmlschema = pytest.importorskip("xmlschema", reason="validating JUnit needs xmlschema (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
XSD = ROOT / "tests" / "fixtures" / "junit-10.xsd"
XS = "{http://www.w3.org/2001/XMLSchema}"
CASE_PROPERTIES = ["property", "backend", "device", "dtype", "config", "mode"]


@pytest.fixture(scope="module")
def junit(tmp_path_factory) -> ET.Element:
    """numpy (healthy), a backend that exits mid-case (a worker-written and a supervisor-written part), and
    a backend that cannot load (supervisor rows only)."""
    tmp = tmp_path_factory.mktemp("junit")
    proc = subprocess.run(
        [sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", "numpy",
         "--backend", "tests.broken_backends:Exits", "--backend", "tests.no_such_module:B",
         "--profile", "smoke", "-n", "2",
         "--output", str(tmp / "r.parquet"), "--junitxml", str(tmp / "junit.xml"),
         "-k", "test_identity_block and float64 and not preset"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    return ET.parse(tmp / "junit.xml").getroot()


def schema_with_case_properties() -> xmlschema.XMLSchema:
    tree = ET.parse(XSD)
    [case] = [e for e in tree.getroot().iter(f"{XS}element") if e.get("name") == "testcase"]
    ET.SubElement(case.find(f"{XS}complexType/{XS}sequence/{XS}choice"), f"{XS}element", ref="properties")
    return xmlschema.XMLSchema(ET.tostring(tree.getroot(), encoding="unicode"))


def test_valid_against_pytests_schema(junit):
    stripped = copy.deepcopy(junit)
    for case in stripped.iter("testcase"):
        for props in case.findall("properties"):
            case.remove(props)
    xmlschema.XMLSchema(XSD).validate(stripped)
    schema_with_case_properties().validate(junit)


def test_one_suite_per_backend(junit):
    """-n 2 splits each backend into two workers, each writing a suite, plus the supervisor's rows: one
    suite per backend all the same, its counts those of its own testcases."""
    names = [suite.get("name") for suite in junit.iter("testsuite")]
    # by the backend's own name (the worker's suite and the supervisor's rows alike: `exits`); one that never
    # loaded is known only by its spelling
    assert sorted(names) == ["resconf.exits", "resconf.numpy", "resconf.tests.no_such_module:B"]
    for suite in junit.iter("testsuite"):
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases), suite.get("name")
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases), suite.get("name")
        assert int(suite.get("skipped")) == sum(c.find("skipped") is not None for c in cases), suite.get("name")
    numpy = {c.get("name").split("[")[-1] for s in junit.iter("testsuite") if s.get("name") == "resconf.numpy"
             for c in s.iter("testcase")}
    assert numpy == {f"numpy-float64-{p}-block]" for p in ("pre-zero", "rezero-zero", "rezero-rezero")}
    assert int(junit.get("tests")) == sum(int(s.get("tests")) for s in junit.iter("testsuite"))


def test_every_testcase_says_what_it_checked(junit):
    cases = list(junit.iter("testcase"))
    assert cases
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iterfind("properties/property")}
        assert list(props) == CASE_PROPERTIES, ET.tostring(case)
        assert case.get("name") not in ("", "-"), ET.tostring(case)
    suite_of = {id(c): s.get("name") for s in junit.iter("testsuite") for c in s.iter("testcase")}
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iterfind("properties/property")}
        assert suite_of[id(case)] == f"resconf.{props['backend']}"


def test_the_harness_rows_are_named_and_failed(junit):
    cases = {c.get("name"): c for c in junit.iter("testcase")}
    [run] = [c for name, c in cases.items() if name.startswith("RUN")]
    assert "cannot import 'tests.no_such_module'" in run.find("failure").get("message")
    died = [c for c in cases.values() if c.find("failure") is not None and "exited with status 1" in
            c.find("failure").get("message")]
    assert {c.get("name") for c in died} == {f"conformance/test_identity.py::test_identity_block"
                                             f"[exits-float64-rezero-{init}-block]" for init in ("zero", "rezero")}

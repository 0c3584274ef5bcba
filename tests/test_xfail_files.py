"""Expected-failure files (conformance/xfails.py): every malformed file is a one-line error naming the file,
the entry and what was expected, raised when the file is loaded (before any case runs); entries are keyed by
the backend's own name, whatever spelling selected it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resconf.conformance import xfails

ROOT = Path(__file__).resolve().parents[1]
GOOD = 'property = "ID-1"\nreason = "r"\n'


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(pytest.UsageError) as info:
        xfails.load([], [path])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize("text, expected", [
    ("[xfail]\n" + GOOD, "xfail is a single table ([xfail]); expected an array of tables: write each entry "
                         "under [[xfail]]"),
    ('xfail = "x"\n', "xfail is a string; expected an array of tables: write each entry under [[xfail]]"),
    ('xfail = ["ID-1"]\n', "entry 1 is a string; expected a table of key = value lines under [[xfail]]"),
    ("[[xfails]]\n" + GOOD, "unknown top-level key 'xfails'; expected only [[xfail]] entries"),
])
def test_wrong_shape_names_file_and_what_was_expected(tmp_path, text, expected):
    assert load_error(tmp_path, text) == expected


@pytest.mark.parametrize("line, expected", [
    ('config = "noequals"', "entry 2: config 'noequals' is not key=value pairs; expected e.g. "
                            "\"branch=attention\" or \"placement=pre,init=zero\""),
    ('config = "branch=attention,"', "entry 2: config 'branch=attention,' is not key=value pairs; expected e.g. "
                                     "\"branch=attention\" or \"placement=pre,init=zero\""),
    ('dtype = "fp32"', "entry 2: dtype 'fp32' is not a dtype; expected one of float64, float32, bfloat16, "
                       "float16"),
    ("dtype = 32", "entry 2: dtype = 32 is an integer; expected a string"),
    ('test = ["test_identity_block"]', "entry 2: test = ['test_identity_block'] is an array; expected a string"),
    ('strict = "no"', "entry 2: strict = 'no' is a string; expected true or false"),
])
def test_wrong_values_name_the_entry(tmp_path, line, expected):
    text = f"[[xfail]]\n{GOOD}\n[[xfail]]\n{GOOD}{line}\n"
    assert load_error(tmp_path, text) == expected


def test_strict_false_marks_a_machine_dependent_entry_not_strict(tmp_path):
    """`strict = false`: a deviation some machines show and others not (a pass is a pass, not a stale entry)."""
    path = tmp_path / "x.toml"
    path.write_text(f"[[xfail]]\n{GOOD}strict = false\n\n[[xfail]]\n{GOOD}")
    assert [e.strict for e in xfails.load([], [path])] == [False, True]


def test_unknown_property_is_refused_with_the_catalogue(tmp_path):
    message = load_error(tmp_path, '[[xfail]]\nproperty = "ID-9"\nreason = "r"\n')
    assert message.startswith("entry 1: unknown property 'ID-9'; expected a property ID of the catalogue "
                              "(docs/spec.md): "), message
    assert "ID-1" in message and "GR-1" in message


def test_the_catalogue_is_the_suites_and_the_specs():
    """The IDs entries are checked against are those the suite's tests carry, each one in docs/spec.md."""
    ids = xfails.property_ids()
    assert {"ID-1", "GR-1", "VG-1", "XB-1", "BI-4", "TP-1"} <= ids
    spec = set(re.findall(r"^\| ([A-Z]{2,}-\d+) \|", (ROOT / "docs" / "spec.md").read_text(), re.MULTILINE))
    assert ids <= spec


def test_every_builtin_file_loads():
    names = [p.stem for p in xfails.BUILTIN_DIR.glob("*.toml")]
    assert names and xfails.load(names, [])


def test_a_bad_file_is_refused_by_resconf_check_in_one_line(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[[xfail]]\nproperty = "ID-1"\nreason = "r"\nconfig = "noequals"\n')
    proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", "numpy",
                           "--xfails", str(path), "--output", str(tmp_path / "r.parquet"), "-k", "test_identity_block"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [f"resconf: {path}: entry 1: config 'noequals' is not key=value pairs; "
                                        "expected e.g. \"branch=attention\" or \"placement=pre,init=zero\""]
    assert not (tmp_path / "r.parquet").exists()


# --- keyed by the backend's own name ---

def test_builtin_file_is_found_by_the_backends_own_name():
    """`resconf.backends.jax.backend:JaxBackend` is the backend named `jax`: jax.toml applies to it."""
    entries = xfails.for_session({"resconf.backends.jax.backend:JaxBackend": "jax"}, [])
    assert entries and {e.source for e in entries} == {str(xfails.BUILTIN_DIR / "jax.toml")}
    assert {e.backend for e in entries} == {"jax"}


def test_user_entries_name_a_backend_by_its_own_name_or_its_spelling(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("".join(f'[[xfail]]\nbackend = "{b}"\nproperty = "ID-1"\nreason = "{b}"\n'
                            for b in ("raises", "tests.broken_backends:Raises", "raises_ep", "numpy")))
    entries = xfails.for_session({"raises_ep": "raises"}, [path])
    assert [e.reason for e in entries] == ["raises", "raises_ep"]  # the other spelling and numpy are not here


def check_rows(tmp_path: Path, backend: str, xfail_file: Path, tag: str) -> list[dict]:
    """`resconf check` on three quick cases of `backend`, with an entry point `raises_ep` installed."""
    dist = tmp_path / "meta" / "raises_ep-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raises-ep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[resconf.backends]\nraises_ep = tests.broken_backends:Raises\n")
    out = tmp_path / f"{tag}.parquet"
    proc = subprocess.run([sys.executable, "-m", "resconf.conformance.cli", "check", "--backend", backend,
                           "--xfails", str(xfail_file), "--profile", "smoke", "-n", "1", "--output", str(out),
                           "-k", "test_identity_block and float64 and not preset"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(dist.parent)])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return pq.read_table(out).to_pylist()


def test_two_spellings_of_one_backend_get_the_same_ids_and_expected_failures(tmp_path):
    """tests.broken_backends:Raises and the entry point raises_ep are one backend, named `raises`: the same
    test ids, rows under that name, and an entry naming it applies under either spelling."""
    path = tmp_path / "x.toml"
    path.write_text('[[xfail]]\nbackend = "raises"\nproperty = "ID-1"\ntest = "test_identity_block"\n'
                    'reason = "stack_forward raises"\n')
    by_path = check_rows(tmp_path, "tests.broken_backends:Raises", path, "path")
    by_entry_point = check_rows(tmp_path, "raises_ep", path, "ep")
    for rows, spelled in ((by_path, "tests.broken_backends:Raises"), (by_entry_point, "raises_ep")):
        assert len(rows) == 3 and {(r["backend"], r["outcome"]) for r in rows} == {("raises", "xfailed")}, rows
        assert all(r["rerun"].startswith(f"resconf check --backend {spelled} ") for r in rows)
    assert sorted(r["test"] for r in by_path) == sorted(r["test"] for r in by_entry_point)
    assert all("test_identity_block[raises-float64-" in r["test"] for r in by_path)

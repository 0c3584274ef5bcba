"""`resconf report`: the tables' numbers against the fixtures they were built from, the failure list, byte-
identical rebuilds, bad inputs that never raise, and the page as headless Chromium renders it.

The fixtures are tests/fixtures/results/*.parquet (tests/fixtures/make_results_fixtures.py writes them); the
expected values here are read back from those files with pyarrow, not copied from the report.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("matplotlib", reason="the report's plots need matplotlib: pip install 'resconf[report]'")

from resconf.conformance.results import SCHEMA, read_results  # noqa: E402
from resconf.reports.build import build_document  # noqa: E402
from resconf.reports.cli import main  # noqa: E402
from resconf.reports.history import REGRESSION_FACTOR  # noqa: E402
from resconf.reports.load import load_inputs  # noqa: E402
from resconf.reports.matrix import FAMILIES  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "results"
RESULTS = [FIXTURES / "run_a.parquet", FIXTURES / "run_b.parquet"]
BENCH = FIXTURES / "bench.parquet"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report_args(out: Path) -> list[str]:
    return [*map(str, RESULTS), "--bench", str(BENCH), "--out", str(out)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(report_args(out)) == 0
    return out


@pytest.fixture(scope="module")
def document():
    return build_document(load_inputs(RESULTS, BENCH))


def shape(r: dict) -> str:
    """How the report labels a benchmark case: its shape, and the stack's depth."""
    return f"{r['tokens']}x{r['hidden']}" + (f", depth {r['depth']}" if r["depth"] is not None else "")


def fixture_results() -> list[dict]:
    return [r for path in RESULTS for r in read_results(path).to_pylist()]


# --- the tables against the fixtures ---

def test_matrix_counts_and_colours_match_the_fixtures(document):
    table = document.section("1.").tables()[0]
    assert table.headers == ("backend", "device", *FAMILIES)
    counts = Counter((r["backend"], r["device"], r["property"].split("-")[0], r["outcome"]) for r in fixture_results())
    subjects = sorted({(b, d) for b, d, _, _ in counts})
    assert [(row[0].text, row[1].text) for row in table.rows] == subjects
    for row in table.rows:
        for fam, cell in zip(FAMILIES, row[2:]):
            for outcome in ("passed", "failed", "xfailed", "xpassed", "skipped"):
                n = counts[(row[0].text, row[1].text, fam, outcome)]
                assert (f"{n} {outcome}" in cell.text) == (n > 0), (row[0].text, fam, outcome, cell.text)
    status = {(row[0].text, fam): cell.status for row in table.rows for fam, cell in zip(FAMILIES, row[2:])}
    assert status[("numpy", "ID")] == "pass"  # all passed
    assert status[("torch", "ID")] == "fail"  # passes and one failure
    assert status[("torch", "GR")] == "xfail"  # passes and an expected failure
    assert status[("jax", "GR")] == "xfail"  # an unexpected pass
    assert status[("torch", "XB")] == "pass"  # passes next to a skip
    assert status[("numpy", "BI")] == "skip"  # only skipped
    assert status[("jax", "VG")] == ""  # nothing ran


def test_every_failure_is_listed_with_its_rerun_line(built, document):
    failed = [r for r in fixture_results() if r["outcome"] == "failed"]
    assert failed
    details = [b for b in document.section("1.").blocks if hasattr(b, "command")]
    assert [d.command for d in details] == [r["rerun"] for r in failed]
    markdown = (built / "report.md").read_text()
    page = (built / "index.html").read_text()
    for r in failed:
        assert r["rerun"] in markdown
        assert r["rerun"].replace("'", "&#x27;") in page
        assert r["counterexample"] in dict(details[0].fields).values()


def test_throughput_table_gbps_and_roofline_fraction_match_the_fixture(document):
    rows = pq.read_table(BENCH).to_pylist()
    latest = max(r["date"] for r in rows)
    expected = sorted((r["op"], r["dtype"], shape(r), r["backend"] or "-",
                       "-" if r["gbps"] is None else f"{r['gbps']:.1f}",
                       "-" if r["roofline_fraction"] is None else f"{100 * r['roofline_fraction']:.0f}%")
                      for r in rows if r["date"] == latest)
    table = document.section("2.").tables()[0]
    got = sorted(zip(*(table.column(h) for h in ("op", "dtype", "shape", "backend", "GB/s", "% of roofline"))))
    assert got == expected
    assert len(document.section("2.").figures()) == 1  # one machine, one device: one figure, a panel per shape


def test_regressions_are_the_cases_slower_than_the_factor(document):
    rows = pq.read_table(BENCH).to_pylist()
    by_case: dict = {}
    for r in sorted(rows, key=lambda r: r["date"]):
        by_case.setdefault((r["op"], r["dtype"], shape(r), r["backend"] or "-"), []).append(r["time_s"])
    expected = sorted((*k, f"x{t[1] / t[0]:.2f}") for k, t in by_case.items() if t[1] > REGRESSION_FACTOR * t[0])
    assert expected, "the fixture holds a regression"
    table = document.section("3.").tables()[0]
    assert sorted(zip(*(table.column(h) for h in ("op", "dtype", "shape", "backend", "ratio")))) == expected
    assert all(cell.status == "fail" for row in table.rows for cell in row[-1:])


def test_residual_stream_plots_and_reference_values(document):
    section = document.section("4.")
    captions = [f.caption for f in section.figures()]
    assert len(captions) == 3  # VG-2, VG-3, GR-3: variance first
    assert "2.92" in captions[0] and "1.8e-8" in captions[2]
    assert all(f.png.startswith(PNG_SIGNATURE) for f in section.figures())
    endpoints = section.tables()[0]
    assert any("theory 1 + 0.01 l 2.92 at 192" in t for t in endpoints.column("series: value at depth"))


def test_run_metadata_lists_runs_versions_and_inputs(document):
    section = document.section("5.")
    runs = section.tables()[0]
    assert runs.column("run") == ["run-a", "run-b"]
    assert runs.column("frameworks") == ["numpy 2.1.0, torch 2.13.0", "jax 0.10.2, jaxlib 0.10.2"]
    files = section.tables()[-1]
    assert files.column("file") == [str(p) for p in [*RESULTS, BENCH]]


def test_two_builds_are_byte_identical(built, tmp_path):
    """The second build runs in a fresh interpreter with another string-hash seed: no set order leaks out."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-m", "resconf.reports.cli", *report_args(tmp_path)], env=env,
                          cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("index.html", "report.md"):
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name


# --- bad input: a one-line error, never a traceback; the readable rest still makes the report ---

def write_bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    empty, corrupt = folder / "empty.parquet", folder / "corrupt.parquet"
    empty.write_bytes(b"")
    corrupt.write_bytes(b"PAR1 this is not parquet")
    old = folder / "old_schema.parquet"
    table = read_results(RESULTS[1])
    pq.write_table(table.replace_schema_metadata({"resconf_schema_version": "0"}), old)
    no_rows = folder / "no_rows.parquet"
    pq.write_table(SCHEMA.empty_table(), no_rows)
    return {"empty": empty, "corrupt": corrupt, "old": old, "no_rows": no_rows, "missing": folder / "absent.parquet"}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_no_inputs_is_exit_2_with_one_line(tmp_path, capsys):
    code, err = run_cli(["--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no input" in err


def test_nothing_readable_is_exit_2_and_the_page_says_why(tmp_path, capsys):
    bad = write_bad_inputs(tmp_path / "bad")
    out = tmp_path / "out"
    code, err = run_cli([*map(str, bad.values()), "--bench", str(bad["corrupt"]), "--out", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == len(bad) + 2  # one per unreadable input (the bench too) and the verdict
    page = (out / "index.html").read_text()
    for path in bad.values():
        assert str(path) in page
    assert "schema version 0" in page and "holds no result rows" in page


def test_readable_files_still_make_the_report(tmp_path, capsys):
    bad = write_bad_inputs(tmp_path / "bad")
    out = tmp_path / "out"
    code, err = run_cli([str(RESULTS[0]), str(bad["corrupt"]), str(bad["old"]), "--out", str(out)], capsys)
    assert code == 0
    assert f"skipped {bad['corrupt']}" in err and f"skipped {bad['old']}" in err
    markdown = (out / "report.md").read_text()
    assert "Unreadable inputs" in markdown and "| numpy | cpu |" in markdown
    assert "No benchmark export" in markdown


def test_swapped_inputs_are_named_not_crashed_on(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli([str(BENCH), "--bench", str(RESULTS[0]), "--out", str(out)], capsys)
    assert code == 2
    assert "not a conformance results file" in err and "not a benchmark export" in err


def test_bench_export_with_only_the_required_columns_degrades(tmp_path, capsys):
    slim = tmp_path / "slim.parquet"
    pq.write_table(pq.read_table(BENCH, columns=["op", "backend", "time_s"]), slim)
    code, _ = run_cli(["--bench", str(slim), "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "no GB/s" in markdown and "one commit per machine" in markdown


def test_a_results_directory_reads_every_parquet_under_it(tmp_path, capsys):
    for i, path in enumerate(RESULTS):
        (tmp_path / "ds" / f"run={i}").mkdir(parents=True)
        shutil.copy(path, tmp_path / "ds" / f"run={i}" / "part.parquet")
    code, _ = run_cli([str(tmp_path / "ds"), "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    assert "38 results from 2 runs" in (tmp_path / "out" / "report.md").read_text()


# --- the page in a browser ---

class _PageParts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables, self.images, self.headers = 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data):
        if self.lasttag == "th":
            self.headers.append(data)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, timeout=180, check=False)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")
def test_the_page_renders_in_headless_chromium(built, tmp_path):
    from PIL import Image  # matplotlib's own dependency

    url = (built / "index.html").resolve().as_uri()
    shot = tmp_path / "page.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, profile=tmp_path / "profile")
    assert shot.exists(), done.stderr.decode(errors="replace")[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280) and pixels.std() > 10.0, "the screenshot is blank"

    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout.decode()
    parts = _PageParts()
    parts.feed(dom)
    assert parts.tables >= 1 and {"backend", "device", *FAMILIES} <= set(parts.headers), "no conformance matrix"
    assert len(parts.images) >= 5
    for src in parts.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        Image.open(io.BytesIO(png)).verify()


def test_pyarrow_reads_the_fixtures_as_results():
    """Guards the fixtures themselves: rerun make_results_fixtures.py after a results schema change."""
    for path in RESULTS:
        assert read_results(path).schema.equals(SCHEMA, check_metadata=False)
    assert isinstance(pq.read_table(BENCH), pa.Table)

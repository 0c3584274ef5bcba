"""`resconf report`: the tables' numbers against the fixtures they were built from, the latest-run view and
run selection, the per-backend drilldown and spec links, the failure list, byte-identical rebuilds, bad inputs
that never raise, and the page as headless Chromium renders it.

The fixtures are tests/fixtures/results/*.parquet (tests/fixtures/make_results_fixtures.py writes them); the
expected values here are read back from those files with pyarrow, not copied from the report.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("matplotlib", reason="the report's plots need matplotlib: pip install 'resconf[report]'")

from resconf.conformance.results import SCHEMA, read_results  # noqa: E402
from resconf.reports import stream_plots, throughput  # noqa: E402
from resconf.reports.build import build_document  # noqa: E402
from resconf.reports.cli import main  # noqa: E402
from resconf.reports.document import Detail, Figure, Fold  # noqa: E402
from resconf.reports.history import history_section, slower_points  # noqa: E402
from resconf.reports.nightly import nightly  # noqa: E402
from resconf.reports.load import load_inputs  # noqa: E402
from resconf.reports.log_clip import CLIP_DECADES  # noqa: E402
from resconf.reports.markdown import detail_md  # noqa: E402
from resconf.reports.matrix import FAMILIES, empty_family_text  # noqa: E402
from resconf.reports.runs import RunSelection  # noqa: E402
from resconf.conformance.catalogue import FAMILIES as CATALOGUE_FAMILIES, Family  # noqa: E402
from resconf.reports.sections import ORDER, title  # noqa: E402
from resconf.reports.spec_index import SPEC_URL, load_spec  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "results"
RESULTS = [FIXTURES / "run_old.parquet", FIXTURES / "run_a.parquet", FIXTURES / "run_b.parquet"]
BENCH = FIXTURES / "bench.parquet"
SUBSET = FIXTURES / "run_c.parquet"  # the newest run: a -k rerun of one numpy property after run_a
SPEC_PATH = Path(__file__).resolve().parents[1] / "docs" / "spec.md"
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
    """How the report labels a benchmark case: its shape, a preset stack's layer, and the stack's depth."""
    return (f"{r['tokens']}x{r['hidden']}" + (f", {r['preset']}" if r.get("preset") else "")
            + (f", depth {r['depth']}" if r["depth"] is not None else ""))


def fixture_results() -> list[dict]:
    return [r for path in RESULTS for r in read_results(path).to_pylist()]


def latest_results() -> list[dict]:
    """What the default view must show, worked out from the files: for each (backend, device), the rows of the
    run with the newest timestamp among those that covered it."""
    rows = fixture_results()
    newest = {}
    for r in sorted(rows, key=lambda r: (r["timestamp"], r["run_id"])):
        newest[(r["backend"], r["device"])] = r["run_id"]
    return [r for r in rows if newest[(r["backend"], r["device"])] == r["run_id"]]


def matrix_status(document) -> dict[tuple[str, str], str]:
    table = document.section("1.").tables()[0]
    return {(row[0].text, fam): cell.status for row in table.rows for fam, cell in zip(FAMILIES, row[2:])}


def spec_anchors() -> set[str]:
    """The GitHub anchors of docs/spec.md's headings, computed here the way GitHub does."""
    import re
    headings = [line.lstrip("#").strip() for line in SPEC_PATH.read_text().splitlines() if line.startswith("## ")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


# --- the tables against the fixtures ---

def test_sections_are_numbered_in_their_fixed_order(document):
    assert [s.title for s in document.sections] == [title(name) for name in ORDER]
    assert document.sections[0].title == "1. Conformance matrix"


def test_matrix_counts_and_colours_match_the_fixtures(document):
    table = document.section("1.").tables()[0]
    assert table.headers == ("backend", "device", *FAMILIES)
    shown = latest_results()
    counts = Counter((r["backend"], r["device"], r["property"].split("-")[0], r["outcome"]) for r in shown)
    subjects = sorted({(b, d) for b, d, _, _ in counts})
    assert {r["run_id"] for r in shown} == {"run-a", "run-b"}  # backends checked in separate runs all show
    assert [(row[0].text, row[1].text) for row in table.rows] == subjects
    for row in table.rows:
        for fam, cell in zip(FAMILIES, row[2:]):
            for outcome in ("passed", "failed", "xfailed", "xpassed", "skipped"):
                n = counts[(row[0].text, row[1].text, fam, outcome)]
                assert (f"{n} {outcome}" in cell.text) == (n > 0), (row[0].text, fam, outcome, cell.text)
    status = matrix_status(document)
    assert status[("numpy", "ID")] == "pass"  # all passed
    assert status[("torch", "ID")] == "fail"  # passes and one failure
    assert status[("torch", "GR")] == "xfail"  # passes and an expected failure
    assert status[("jax", "GR")] == "xfail"  # an unexpected pass
    assert status[("torch", "XB")] == "pass"  # passes next to a skip
    assert status[("numpy", "BI")] == "skip"  # only skipped
    assert status[("jax", "VG")] == ""  # nothing ran


def test_a_family_without_any_result_reads_not_run_or_not_implemented(document):
    """TP is in the catalogue but has no rows in the fixtures: "not run"; a catalogue family with no property
    yet reads "not implemented"."""
    assert not any(r["property"].startswith("TP-") for r in fixture_results())
    table = document.section("1.").tables()[0]
    assert set(table.column("TP")) == {"not run"}
    assert all(row[2].text != "not implemented" for row in table.rows)  # ID has results: counts or "-"
    later = load_spec(families=(*CATALOGUE_FAMILIES, Family("QQ", "a family for later", "later")))
    assert (empty_family_text("QQ", later), empty_family_text("TP", later)) == ("not implemented", "not run")


# --- which runs are shown ---

def test_an_older_runs_failure_is_not_shown_by_default_but_is_with_all_runs():
    old_failures = [r for r in fixture_results() if r["run_id"] == "run-old" and r["outcome"] == "failed"]
    assert old_failures and {r["backend"] for r in old_failures} == {"numpy"}
    inputs = load_inputs(RESULTS, None)
    assert matrix_status(build_document(inputs))[("numpy", "XB")] == "pass"
    assert matrix_status(build_document(inputs, RunSelection(all_runs=True)))[("numpy", "XB")] == "fail"
    paragraphs = [b.text for b in build_document(inputs).section("1.").blocks if hasattr(b, "text")]
    assert any("run-old" in t and "not shown" in t for t in paragraphs)  # the page says what it left out
    assert any("1 more failure" in t for t in paragraphs)


def test_a_subset_run_is_laid_over_the_full_run_not_put_in_its_place(tmp_path, capsys):
    """run_c reran numpy's ID-1 with -k after run_a: numpy keeps run_a's coverage, and only the cases run_c
    ran come from it (ID-1 float32 now fails)."""
    files = [*RESULTS, SUBSET]
    every = [r for path in files for r in read_results(path).to_pylist()]
    case = lambda r: (r["backend"], r["device"], r["dtype"], r["property"], r["test"], r["config"])  # noqa: E731
    rerun = [r for r in every if r["run_id"] == "run-c"]
    assert rerun and {r["selection"] for r in rerun} != {""} and {r["backend"] for r in rerun} == {"numpy"}
    kept = [r for r in every if r["run_id"] == "run-a" and r["backend"] == "numpy"
            and case(r) not in {case(r) for r in rerun}]
    document = build_document(load_inputs(files, None))
    section = document.section("1.")
    shown = [(d.title, d.fields) for d in section.blocks if isinstance(d, Detail)]
    assert [t for t, _ in shown] == ["ID-1 failed: numpy on cpu, float32", "ID-3 failed: torch on cpu, bfloat16"]
    status = matrix_status(document)
    assert status[("numpy", "ID")] == "fail"
    assert all(status[("numpy", fam)] == "pass" for fam in ("GR", "VG", "XB")), status  # run_a's coverage kept
    code, _ = run_cli([*map(str, files), "--out", str(tmp_path)], capsys)
    assert code == 0
    numpy_row = next(line for line in (tmp_path / "report.md").read_text().splitlines()
                     if line.startswith("| numpy | cpu |"))
    ids = Counter(r["outcome"] for r in kept + rerun if r["property"].startswith("ID-"))
    assert f"🔴 {ids['passed']} passed, {ids['failed']} failed" in numpy_row
    others = [r for r in latest_results() if r["backend"] != "numpy"]  # torch (run_a) and jax (run_b)
    assert section.blocks[1].text.startswith(f"{len(kept) + len(rerun) + len(others)} results from 3 runs")
    how = section.blocks[0].text
    assert "numpy, torch on cpu from run-a" in how and "numpy on cpu from run-c" in how
    assert f"(a subset: the {len(rerun)} cases it ran)" in how


def test_cli_all_runs_and_run_pick_runs(tmp_path, capsys):
    code, _ = run_cli([*map(str, RESULTS), "--all-runs", "--out", str(tmp_path / "all")], capsys)
    assert code == 0
    xb = Counter(r["outcome"] for r in fixture_results() if r["backend"] == "numpy" and r["property"][:2] == "XB")
    numpy_row = next(line for line in (tmp_path / "all" / "report.md").read_text().splitlines()
                     if line.startswith("| numpy | cpu |"))
    assert f"🔴 {xb['passed']} passed, {xb['failed']} failed" in numpy_row
    code, _ = run_cli([*map(str, RESULTS), "--run", "run-old", "--out", str(tmp_path / "old")], capsys)
    assert code == 0
    markdown = (tmp_path / "old" / "report.md").read_text()
    assert "chosen with --run: run-old" in markdown and "| torch | cpu |" not in markdown
    assert "XB-1 failed: numpy on cpu, float32" in markdown


def test_an_unknown_run_is_exit_2_naming_the_runs_found(tmp_path, capsys):
    code, err = run_cli([*map(str, RESULTS), "--run", "run-z", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "run-z" in err and "run-old, run-a, run-b" in err
    assert not (tmp_path / "out").exists()


# --- drilldown, legend and spec links ---

def test_each_backend_has_a_property_by_dtype_fold(document):
    shown = latest_results()
    folds = [b for b in document.section("1.").blocks if isinstance(b, Fold)]
    assert [f.summary.split(":")[0] for f in folds] == [f"{b} on {d}" for b, d in
                                                        sorted({(r["backend"], r["device"]) for r in shown})]
    for fold in folds:
        backend = fold.summary.split(" on ")[0]
        mine = [r for r in shown if r["backend"] == backend]
        assert fold.open == any(r["outcome"] == "failed" for r in mine)  # a failure starts unfolded
        table = fold.blocks[0]
        counts = Counter((r["property"], r["dtype"], r["outcome"]) for r in mine)
        assert set(table.column("property")) == {r["property"] for r in mine}
        for row in table.rows:
            for dtype, cell in zip(table.headers[2:], row[2:]):
                for outcome in ("passed", "failed", "xfailed", "xpassed", "skipped"):
                    n = counts[(row[0].text, dtype, outcome)]
                    assert (f"{n} {outcome}" in cell.text) == (n > 0), (backend, row[0].text, dtype, cell.text)
    torch = next(f.blocks[0] for f in folds if f.summary.startswith("torch"))
    id3 = next(row for row in torch.rows if row[0].text == "ID-3")
    assert id3[torch.headers.index("bfloat16")].status == "fail" and id3[torch.headers.index("float32")].text == "-"


class _Links(HTMLParser):
    """Every href and every id of a page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.hrefs, self.ids = [], set()
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])


def test_property_ids_link_into_the_page_so_links_work_from_disk(built, document):
    """The page is opened from disk (a CI artifact): every link is an id in the page itself, and the property
    IDs and family codes land on the catalogue's statements, embedded in its last section."""
    spec_text = SPEC_PATH.read_text()
    fold = document.section("1.").folds()[0]
    for row in fold.blocks[0].rows:
        cell = row[0]
        assert cell.href == f"#spec-{cell.text.lower()}", cell.href
        assert cell.title and f"| {cell.text} | {cell.title.split(' ')[0]}" in spec_text.replace("`", "")
    legend = document.section("1.").tables()[1]
    assert legend.column("code") == list(FAMILIES)
    assert [row[2].href for row in legend.rows] == [f"#spec-{f.lower()}" for f in FAMILIES]
    assert legend.rows[FAMILIES.index("TP")][1].text == "tensor parallel"  # implemented: no "not implemented yet"
    catalogue = document.section(f"{len(ORDER)}.").tables()[0]
    statements = dict(zip(catalogue.column("property"), catalogue.column("statement")))
    assert {row[0].text: row[0].title for row in fold.blocks[0].rows}.items() <= statements.items()
    page = (built / "index.html").read_text()
    links = _Links(page)
    assert links.hrefs and not [h for h in links.hrefs if not h.startswith("#")], "a link that leaves the page"
    assert not [h for h in links.hrefs if h[1:] not in links.ids], "a link to an id the page does not have"
    assert {f"spec-{f.lower()}" for f in FAMILIES} <= links.ids and "<details open><summary>torch" in page
    markdown = (built / "report.md").read_text()
    assert "| ID-3 |" in markdown and "](/" not in markdown and "](#" not in markdown  # no link that goes nowhere


def test_spec_url_option_links_to_the_spec_headings_instead(tmp_path, capsys):
    url = "https://example.org/resconf/blob/abc123/docs/spec.md"
    code, _ = run_cli([str(RESULTS[1]), "--spec-url", url, "--out", str(tmp_path)], capsys)
    page = (tmp_path / "index.html").read_text()
    assert code == 0 and f'href="{url}#gr-the-gradient-keeps-the-identity-path"' in page
    outside = [h for h in _Links(page).hrefs if not h.startswith("#")]
    assert outside and all(h.split("#")[0] == url and h.split("#")[1] in spec_anchors() for h in outside), outside
    assert f"[ID-1]({url}#id-identity-at-zero \"" in (tmp_path / "report.md").read_text()


def test_every_failure_is_listed_with_its_rerun_line(built, document):
    failed = [r for r in latest_results() if r["outcome"] == "failed"]
    assert failed
    details = [b for b in document.section("1.").blocks if hasattr(b, "command")]
    assert [d.command for d in details] == [r["rerun"] for r in failed]
    markdown = (built / "report.md").read_text()
    page = (built / "index.html").read_text()
    for r in failed:
        assert r["rerun"] in markdown
        assert r["rerun"].replace("'", "&#x27;") in page
        assert r["counterexample"] in dict(details[0].fields).values()


def test_a_failure_card_says_which_example_each_number_and_message_belongs_to(tmp_path, capsys):
    """The measured value is the worst example's (worst_config drew it); the message and counterexample are the
    example hypothesis reported. run_c's failure has both, drawn differently."""
    [r] = [r for r in read_results(SUBSET).to_pylist() if r["outcome"] == "failed"]
    assert r["worst_config"] != r["counterexample"]
    document = build_document(load_inputs([*RESULTS, SUBSET], None))
    [card] = [b for b in document.section("1.").blocks if isinstance(b, Detail) and b.title.startswith("ID-1")]
    fields = dict(card.fields)
    assert fields["worst example: drawn"] == r["worst_config"]
    assert fields["worst example: measured"].startswith(f"{r['measured']:.4g}, required {r['comparison']} "
                                                        f"{r['bound']:.4g} (the largest over {r['examples']} examples")
    assert fields["failing example: message"] == r["message"]
    assert fields["failing example: drawn"] == r["counterexample"]
    assert fields["failing example: reproduce"] == r["seed"]
    unlabelled = set(fields) - {"test", "configuration (fixed)", "run"}
    assert all(k.startswith(("worst example: ", "failing example: ")) for k in unlabelled), fields
    intro = next(b.text for b in document.section("1.").blocks if hasattr(b, "text") and "failures, each" in b.text)
    assert '"worst example"' in intro and '"failing example"' in intro  # the page says what the two are
    code, _ = run_cli([*map(str, [*RESULTS, SUBSET]), "--out", str(tmp_path)], capsys)
    assert code == 0 and "worst example: measured" in (tmp_path / "index.html").read_text()


def fraction_text(fraction: float | None) -> str:
    """How the table writes a roofline fraction: above 100 % marked with the note's asterisk."""
    if fraction is None:
        return "-"
    return f"{100 * fraction:.0f}%" + ("*" if round(100 * fraction) > 100 else "")


def timed_rows() -> list[dict]:
    """The fixture's rows with a time (a failed combination has a row without one)."""
    return [r for r in pq.read_table(BENCH).to_pylist() if r["time_s"] is not None]


def small(r: dict) -> bool:
    """A row the report gives as latency: its bytes fit in the recorded last-level cache."""
    return r.get("flops") is None and None not in (r["bytes_moved"], r.get("cache_bytes")) and (
        r["bytes_moved"] <= r["cache_bytes"])


def test_throughput_table_gbps_and_roofline_fraction_match_the_fixture(document):
    rows = timed_rows()
    latest = max(r["date"] for r in rows)
    one = lambda r: "†" if r["samples"] == 1 else ""  # noqa: E731  a single --quick sample is marked
    expected = sorted((r["op"], r["dtype"], shape(r), r["backend"] or "-",
                       "-" if r["gbps"] is None else f"{r['gbps']:.1f}{one(r)}",
                       fraction_text(r["roofline_fraction"]) + ("" if r["roofline_fraction"] is None else one(r)))
                      for r in rows if r["date"] == latest and not small(r))
    section = document.section("2.")
    table = section.tables()[0]
    got = sorted(zip(*(table.column(h) for h in ("op", "dtype", "shape", "backend", "GB/s", "% of roofline"))))
    assert got == expected
    latency = next(t for t in section.tables() if "small shapes" in t.caption)  # reported apart, by time only
    assert sorted(zip(latency.column("op"), latency.column("shape"), latency.column("backend"))) == sorted(
        (r["op"], shape(r), r["backend"] or "-") for r in rows if r["date"] == latest and small(r))
    assert "GB/s" not in latency.headers
    assert len(section.figures()) == 1  # one machine, one device: one figure, a panel per shape
    over = [r for r in rows if r["date"] == latest and (r["roofline_fraction"] or 0) > 1]
    assert {r["backend"] for r in over} == {"numba_fused"}, "the fixture's numba_fused passes the roofline"


def test_every_figure_above_the_roofline_is_flagged_with_its_reason_and_byte_model(document):
    """No unflagged figure above the roofline: the flag column names the reason and the note under the table
    gives each flag whole (the fixture's numba_fused: unexplained at 2048x4096; at 512x1024 its bytes fit the
    cache, so it is reported as latency, by time only, with no GB/s to flag)."""
    table = document.section("2.").tables()[0]
    cells = list(zip(*(table.column(h) for h in ("op", "shape", "backend", "% of roofline", "flag"))))
    over = [c for c in cells if c[3].rstrip("†").endswith("*")]
    assert sorted((shape, flag) for _, shape, _, _, flag in over) == [("2048x4096", "unexplained")]
    assert all(flag == "-" for *_, fraction, flag in cells if not fraction.rstrip("†").endswith("*"))
    note = next(b.text for b in document.section("2.").blocks if hasattr(b, "text") and b.text.startswith("*"))
    assert note.count("byte model add_rmsnorm_forward: 4·T·H + H elements") == 1
    latency = next(t for t in document.section("2.").tables() if "small shapes" in t.caption)
    assert ("512x1024", "numba_fused", "8.4 MB", "33.6 MB") in zip(*(latency.column(h) for h in (
        "shape", "backend", "bytes moved", "cache")))


def test_layers_show_their_share_of_the_matmul_peak_beside_the_roofline(document):
    """The fixture's llama stack and matmuls: % of matmul peak is GFLOP/s over the best matmul (jax's here)."""
    rows = [r for r in timed_rows() if r["flops"] is not None and r["date"] == max(x["date"] for x in timed_rows())]
    peak = max(r["gflops"] for r in rows if r["op"] == "matmul")
    table = next(t for t in document.section("2.").tables() if "matmul peak" in t.caption)
    got = sorted(zip(*(table.column(h) for h in ("op", "shape", "backend", "GFLOP/s", "% of matmul peak",
                                                  "% of roofline"))))
    expected = sorted((r["op"], shape(r), r["backend"], f"{r['gflops']:.1f}", f"{100 * r['gflops'] / peak:.0f}%",
                       fraction_text(r["roofline_fraction"])) for r in rows)
    assert got == expected
    stack = next(r for r in rows if r["preset"] == "llama")
    assert stack["roofline_gbps"] == max(r["roofline_gbps"] for r in timed_rows() if r["op"] == "copy"), \
        "a stack is held to its device's roofline at the largest measured shape"
    above = [replace(r, matmul_fraction=1.2) if r.op == "preset_stack_forward" else r for r in load_inputs([], BENCH).bench]
    notes = [b.text for b in throughput.throughput_section(above).blocks if hasattr(b, "text")]
    assert sum(t.startswith("* above 100 % of the matmul peak") for t in notes) == 1
    shown = [b.text for b in document.section("2.").blocks if hasattr(b, "text")]
    assert not any(t.startswith("* above 100 % of the matmul peak") for t in shown), "no note where none passes"


def test_an_export_without_flags_is_flagged_by_the_report(tmp_path):
    """An older export (no flag column): the report applies the same rule, so still nothing goes unflagged."""
    table = pq.read_table(BENCH)
    slim = tmp_path / "old.parquet"
    pq.write_table(table.drop_columns(["flag", "cache_bytes"]), slim)
    section = build_document(load_inputs([], slim)).section("2.")
    flags = section.tables()[0].column("flag")
    assert sorted(f for f in flags if f != "-") == ["unexplained", "unexplained"]  # no cache size: not judged


def test_single_sample_times_are_marked_and_the_spread_shown(document):
    """A --quick time (one sample) says so in its row and under the table; a time over samples shows its spread
    (half the interquartile range over the median: the fixture's quartiles are the median -+3 %)."""
    every = timed_rows()
    rows = [r for r in every if r["date"] == max(r["date"] for r in every)]
    section = document.section("2.")
    table = section.tables()[0]
    got = sorted(zip(*(table.column(h) for h in ("op", "dtype", "shape", "backend", "spread", "samples"))))
    expected = sorted((r["op"], r["dtype"], shape(r), r["backend"] or "-",
                       "-" if r["time_q25_s"] is None
                       else f"±{50 * (r['time_q75_s'] - r['time_q25_s']) / r['time_s']:.1f}%",
                       f"{r['samples']}" + (" † (--quick)" if r["samples"] == 1 else "")) for r in rows if not small(r))
    assert got == expected
    assert any(r["samples"] == 1 for r in rows) and any(spread == "±3.0%" for *_, spread, _ in got)
    assert any(b.text.startswith("† one sample") for b in section.blocks if hasattr(b, "text"))


def test_bar_charts_are_scaled_by_the_roofline_not_the_tallest_bar(monkeypatch):
    """Every panel's GB/s axis ends at ROOF_HEADROOM x its roofline, so numba_fused (above the roofline in the
    fixture) does not set the scale; one-sample bars are hatched."""
    panels = []
    real = throughput.draw_png

    def spy(count, draw, **kwargs):
        def recorded(fig, axes):
            draw(fig, axes)
            panels.extend((ax.get_title(), ax.get_ylim()[1], max(b.get_height() for b in ax.patches),
                           sorted({b.get_hatch() or "" for b in ax.patches})) for ax in axes)
        return real(count, recorded, **kwargs)

    monkeypatch.setattr(throughput, "draw_png", spy)
    build_document(load_inputs([], BENCH))
    rows = [r for r in pq.read_table(BENCH).to_pylist() if r["op"] == "copy"]
    roof = {shape(r): r["roofline_gbps"] for r in rows if r["date"] == max(x["date"] for x in rows)
            and not small(r)}  # a small shape has no bars: it is reported as latency
    assert sorted(title.rsplit("shape ", 1)[1] for title, *_ in panels) == sorted(roof)
    for title, top, tallest, hatches in panels:
        roofline = roof[title.rsplit("shape ", 1)[1]]
        assert top == pytest.approx(throughput.ROOF_HEADROOM * roofline), title
        assert tallest > roofline, "the fixture's numba_fused passes the roofline"
        assert hatches == ["", "///"], "the one-sample bar is hatched, the others not"


def test_each_kernel_shows_its_conformance_status(document):
    table = document.section("2.").tables()[0]
    shown = latest_results()
    for op, backend, dtype, status in zip(*(table.column(h) for h in ("op", "backend", "dtype", "conformance"))):
        mine = [r for r in shown if r["backend"] == backend and r["device"] == "cpu"]
        if backend == "-":
            assert status == "-"
        elif not mine:
            assert status == "no conformance results", (op, backend)  # numba_fused: timed, never checked
        elif op.startswith("add_rmsnorm"):
            n = sum(r["property"] == "XB-3" and r["dtype"] == dtype and r["outcome"] == "passed" for r in mine)
            assert status == (f"XB-3: {n} passed" if n else f"no XB-3 results in {dtype}"), (op, backend, dtype)
    assert "no conformance results" in table.column("conformance")
    assert any(t.startswith("XB-3: ") for t in table.column("conformance"))


def test_the_nightly_verdicts_are_the_one_judgement_over_time(document):
    """No table of ratios beside the verdicts (asv continuous's x1.3 rule): the fixture's stack is 10 % slower and
    the --quick case may move by any ratio, and neither is listed as a regression; the ratio is a described
    column of the nightly table."""
    section = document.section("3.")
    assert [t.caption.split(" (")[0] for t in section.tables()] == ["Nightly comparison"]
    assert "ratio" in section.tables()[0].headers and "not a verdict" in section.tables()[0].caption
    assert not any("Regression" in getattr(b, "text", "") for b in section.blocks)


def test_the_nightly_table_classifies_each_benchmark_with_a_rerun_command(document):
    """The fixture's second commit: torch float32 1.5x slower (10 samples a side) is slower, jax failed is errored
    (never slower), the --quick case is ambiguous, everything else (the stack 10 % slower included) the same."""
    table = next(t for t in document.section("3.").tables() if t.caption.startswith("Nightly"))
    got = {(op, dtype, case, backend): verdict for op, dtype, case, backend, verdict
           in zip(*(table.column(h) for h in ("op", "dtype", "shape", "backend", "verdict")))}
    every = pq.read_table(BENCH).to_pylist()
    key = lambda r: (r["op"], r["dtype"], shape(r), r["backend"] or "-")  # noqa: E731
    failed = {key(r) for r in every if r["time_s"] is None}
    expected = {}
    for r in every:
        expected[key(r)] = ("errored" if key(r) in failed else "slower" if (r["backend"], r["dtype"], r["op"]) ==
                         ("torch", "float32", "add_rmsnorm_forward") else "ambiguous" if r["samples"] == 1 else "same")
    assert got == expected
    reruns = table.column("rerun")
    assert all(c.startswith("asv continuous --split -a rounds=4 --bench '^bench\\.") for c in reruns), reruns[0]
    assert all(c.endswith("a1b2c3d4e5f6 b2c3d4e5f607") for c in reruns)


def test_a_single_sample_time_is_ambiguous_however_slow_and_never_circled():
    """torch's add_layernorm_forward is one --quick sample at both points: made 3x slower at the second, it is
    ambiguous (too few samples), not slower; only the nightly's slower verdicts are circled on the plots."""
    rows = list(load_inputs([], BENCH).bench)
    quick = [r for r in rows if r.single_sample]
    assert quick and all(r.op == "add_layernorm_forward" for r in quick)
    latest = max(r.date for r in rows)
    slower = [replace(r, time_s=3 * r.time_s) if r.single_sample and r.date == latest else r for r in rows]
    table = history_section(slower).tables()[0]
    verdicts = {v for op, v in zip(table.column("op"), table.column("verdict")) if op == "add_layernorm_forward"}
    assert verdicts == {"ambiguous"}
    circled = slower_points(nightly(slower))
    assert circled and {s[2] for s, _ in circled} == {"add_rmsnorm_forward"}  # the fixture's torch float32 1.5x


def test_residual_stream_plots_and_reference_values(document):
    section = document.section("4.")
    captions = [f.caption for f in section.figures()]
    assert len(captions) == 3  # VG-2, VG-3, GR-3: variance first
    assert "2.92" in captions[0] and "1.8e-8" in captions[2]
    assert all(f.png.startswith(PNG_SIGNATURE) for f in section.figures())
    endpoints = section.tables()[0]
    values = endpoints.column("series: value at depth")
    assert any("theory 1 + 0.01 l 2.92 at 192" in t for t in values)
    assert not any("Var(x_l)" in t and "at 96" in t for t in values)  # run-old's shorter VG-2 is not shown


def test_plot_panels_per_dtype_y_labels_and_a_clipped_log_axis(monkeypatch):
    """Every panel as drawn: VG-2 one panel per backend and dtype, a y label on each, GR-3's axis clipped."""
    panels: list[tuple[str, str, tuple[float, float]]] = []
    real = stream_plots.draw_png

    def spy(count, draw, **kwargs):
        def recorded(fig, axes):
            draw(fig, axes)
            panels.extend((fig.get_suptitle(), ax.get_title(), ax.get_ylabel(), ax.get_ylim()) for ax in axes)
        return real(count, recorded, **kwargs)

    monkeypatch.setattr(stream_plots, "draw_png", spy)
    section = build_document(load_inputs(RESULTS, None)).section("4.")
    shown = latest_results()
    vg2 = sorted(title for sup, title, _, _ in panels if sup == "VG-2")
    assert vg2 == sorted(f"{r['backend']} on {r['device']}, {r['dtype']}" for r in shown if r["property"] == "VG-2")
    assert all(label for _, _, label, _ in panels), "a panel without a y label"
    gr3 = [r for r in shown if r["property"] == "GR-3"]
    top = max(y for r in gr3 for y in r["curve_y"])
    lowest = min(y for r in gr3 for y in r["curve_y"] if y > 0)
    floor = top / 10 ** CLIP_DECADES
    assert lowest < floor, "the fixture's plain curve reaches below the clip"
    for sup, _, _, (bottom, upper) in panels:
        if sup == "GR-3":
            assert bottom == pytest.approx(floor) and upper / bottom <= 10 ** (CLIP_DECADES + 1.01)
    caption = section.figures()[-1].caption
    assert f"clipped at {floor:.0e}" in caption and f"down to {lowest:.1e}" in caption


def test_each_stream_plot_shows_one_backend_and_folds_the_others(monkeypatch):
    """One screen, one property: its figure holds one backend's panels (a column per dtype); the other backends'
    panels are in a closed fold under it. Every backend and dtype is still drawn somewhere."""
    drawn: list[list[str]] = []
    real = stream_plots.draw_png

    def spy(count, draw, **kwargs):
        def recorded(fig, axes):
            draw(fig, axes)
            drawn.append([ax.get_title() for ax in axes])
        return real(count, recorded, **kwargs)

    monkeypatch.setattr(stream_plots, "draw_png", spy)
    section = build_document(load_inputs(RESULTS, None)).section("4.")
    in_order = [(b, False) if isinstance(b, Figure) else (b.blocks[0], True) for b in section.blocks
                if isinstance(b, (Figure, Fold))]
    assert len(in_order) == len(drawn)
    shown = latest_results()
    properties = sorted({r["property"] for r in shown if r["curve_x"]})
    top = [titles for (_, folded), titles in zip(in_order, drawn) if not folded]
    assert len(top) == len(properties)
    for titles in top:
        assert len({t.split(" on ")[0] for t in titles}) == 1, titles  # one backend
    folds = section.folds()
    assert folds and not any(f.open for f in folds)
    assert all(" for the other backends: " in f.summary for f in folds)
    every = sorted(t for titles in drawn for t in titles)
    for prop in properties:  # as before the grouping: a panel per backend and dtype (and distinguishing config)
        assert {f"{r['backend']} on {r['device']}, {r['dtype']}" for r in shown if r["property"] == prop} <= {
            t.split(", branch=")[0] for t in every}


def test_run_metadata_lists_runs_versions_and_inputs(document):
    section = document.section("5.")
    runs = section.tables()[0]
    assert runs.column("run") == ["run-old", "run-a", "run-b"]  # oldest first
    assert runs.column("shown") == ["no", "all", "all"]
    assert runs.column("frameworks") == ["numpy 2.0.0", "numpy 2.1.0, torch 2.13.0", "jax 0.10.2, jaxlib 0.10.2"]
    provenance = section.tables()[1]
    by_run = {r["run_id"]: r for r in fixture_results()}
    assert provenance.column("selection") == ["-", "whole suite", by_run["run-b"]["selection"]]
    assert f"run-b was limited to a subset: {by_run['run-b']['selection']}" in section.blocks[0].text
    assert provenance.column("code commit") == ["-", by_run["run-a"]["code_commit"], by_run["run-b"]["code_commit"]]
    assert provenance.column("resconf commit") == ["-", *(by_run[r]["suite_commit"] for r in ("run-a", "run-b"))]
    assert provenance.column("CI job") == ["-", by_run["run-a"]["ci_job"], "-"]
    files = section.tables()[-1]
    assert files.column("file") == [str(p) for p in [*RESULTS, BENCH]]


def test_the_fixture_script_regenerates_the_fixtures(tmp_path):
    """`python tests/fixtures/make_results_fixtures.py` as docs/report.md documents it, into a scratch folder:
    the same tables as the committed files (rerun it into tests/fixtures/results after a schema change)."""
    script = Path(__file__).parent / "fixtures" / "make_results_fixtures.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for path in [*RESULTS, SUBSET, BENCH]:
        fresh, committed = pq.read_table(tmp_path / path.name), pq.read_table(path)
        assert fresh.equals(committed, check_metadata=True), f"{path.name} is stale: rerun the script"


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


def test_no_inputs_is_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .resconf/results here
    code, err = run_cli(["--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no input" in err and ".resconf/results" in err


def test_by_default_it_reads_and_writes_under_dot_resconf(tmp_path, capsys, monkeypatch):
    """`resconf report` alone: the results `resconf check` wrote (.resconf/results) in, .resconf/report out; no
    top-level folder that a flat-layout project's `pip install -e .` would take for a package."""
    monkeypatch.chdir(tmp_path)
    day = tmp_path / ".resconf" / "results" / "date=2026-11-22"
    day.mkdir(parents=True)
    shutil.copy(RESULTS[1], day / "run-a.parquet")
    code, _ = run_cli([], capsys)
    assert code == 0 and (tmp_path / ".resconf" / "report" / "index.html").is_file()
    assert (tmp_path / ".resconf" / "report" / "report.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".resconf"]


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
    shown = latest_results()
    runs = len({r["run_id"] for r in shown})
    assert f"{len(shown)} results from {runs} runs" in (tmp_path / "out" / "report.md").read_text()


# --- the page in a browser ---

class _PageParts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables, self.images, self.headers, self.details, self.summaries = 0, [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables += 1
        if tag == "details":
            self.details += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data):
        if self.lasttag == "th":
            self.headers.append(data)
        if self.lasttag == "summary":
            self.summaries.append(data)


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
    subjects = {(r["backend"], r["device"]) for r in latest_results()}
    drilldowns = [t for t in parts.summaries if any(t.startswith(f"{b} on {d}: ") for b, d in subjects)]
    assert len(drilldowns) == len(subjects), "no drilldown per backend"
    folded_plots = [t for t in parts.summaries if " for the other backends: " in t]
    assert parts.details == len(drilldowns) + len(folded_plots)
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


def _fenced_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks, closed as CommonMark closes them: a line of at least as many
    backticks as opened the block, and nothing else."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        opening = re.match(r" {0,3}(`{3,})", lines[i])
        if not opening:
            i += 1
            continue
        closing = re.compile(rf" {{0,3}}`{{{len(opening.group(1))},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
        blocks.append("\n".join(lines[i + 1:end]))
        i = end + 1
    return blocks


@pytest.mark.parametrize("rerun", ["resconf check --backend numpy -k 'a or b'",
                                   "resconf check --backend numpy \\\n  -k 'a'\n```\n# Injected heading",
                                   "echo ````` && echo `x`\n``````"], ids=["one-line", "fence-inside", "long-fences"])
def test_a_rerun_line_stays_inside_its_code_fence(rerun):
    """A multi-line rerun value, even one holding a fence of its own, is one code block, verbatim."""
    detail = Detail("GR-2 failed: numpy on cpu, float64", (("test", "t"),), command=rerun)
    assert _fenced_blocks(detail_md(detail)) == [rerun]

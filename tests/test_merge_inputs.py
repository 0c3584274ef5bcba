"""`resconf merge` on files it cannot merge: one line `resconf merge: FILE: what was wrong, what was expected`,
exit 2, nothing written; never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from resconf.conformance import merge
from resconf.conformance.results import COVERAGE_KEY, to_table, write_parquet_atomic
from tests.test_shards import row

COVERS = {"b": {"expected": [["ID-1", "float32"]], "filtered": False}}


def shard_file(path: Path, rows: list, coverage: object = COVERS) -> Path:
    write_parquet_atomic(to_table(rows), path, {COVERAGE_KEY: json.dumps(coverage)})
    return path


def refused(tmp_path: Path, capsys, *files: Path) -> str:
    out = tmp_path / "merged.parquet"
    code = merge.main([*map(str, files), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == merge.EXIT_INCOMPLETE and not out.exists()
    assert len(err.strip().splitlines()) == 1 and err.startswith("resconf merge: "), err
    return err


def test_two_good_shards_merge(tmp_path, capsys):
    files = [shard_file(tmp_path / f"s{k}.parquet", [row(prop, "float32", f"{k}/2")])
             for k, prop in ((1, "ID-1"), (2, "GR-1"))]
    assert merge.main([*map(str, files), "-o", str(tmp_path / "m.parquet")]) == merge.EXIT_OK


def test_a_zero_row_file_is_named(tmp_path, capsys):
    empty = shard_file(tmp_path / "empty.parquet", [])
    err = refused(tmp_path, capsys, empty)
    assert f"{empty}: holds no result rows" in err


@pytest.mark.parametrize("shard", ["2", "a/b", "3/2", "0/2", "1/2/3"])
def test_an_odd_shard_value_is_named(tmp_path, capsys, shard):
    good = shard_file(tmp_path / "good.parquet", [row("ID-1", "float32", "1/2")])
    odd = shard_file(tmp_path / "odd.parquet", [row("GR-1", "float32", shard)])
    err = refused(tmp_path, capsys, good, odd)
    assert f"{odd}: shard {shard!r}" in err and "expected K/N with 1 <= K <= N" in err


@pytest.mark.parametrize("coverage", [{"b": {"filtered": False}}, {"b": {"expected": "ID-1", "filtered": False}},
                                      {"b": {"expected": [["ID-1"]], "filtered": False}}, {"b": []}, ["b"],
                                      {"b": {"expected": [["ID-1", "float32"]]}}], ids=str)
def test_odd_coverage_metadata_is_named(tmp_path, capsys, coverage):
    odd = shard_file(tmp_path / "odd.parquet", [row("ID-1", "float32", "1/1")], coverage)
    err = refused(tmp_path, capsys, odd)
    assert f"{odd}: coverage metadata" in err


def test_coverage_metadata_that_is_not_json_is_named(tmp_path, capsys):
    odd = tmp_path / "odd.parquet"
    write_parquet_atomic(to_table([row("ID-1", "float32", "1/1")]), odd, {COVERAGE_KEY: "{not json"})
    assert f"{odd}: coverage metadata" in refused(tmp_path, capsys, odd)


def test_a_file_that_is_not_parquet_is_named(tmp_path, capsys):
    odd = tmp_path / "odd.parquet"
    odd.write_text("not parquet")
    assert f"{odd}: " in refused(tmp_path, capsys, odd)

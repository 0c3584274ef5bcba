"""`resconf merge SHARD.parquet ... -o OUT.parquet`: the shards of a split run (`resconf check --shard K/N`,
one CI job each) joined into one results file, with the coverage guard judged on the whole.

Fails, writing nothing, when a backend's shards are not exactly 1..N once each (a job that never
uploaded its results must not pass as a smaller run). Each shard judged coverage on its own cases only;
here every (property, claimed dtype) the suite collects must have a row across all shards.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from resconf.conformance import guard, summary
from resconf.conformance.harness_rows import harness_row
from resconf.conformance.options import CheckOptions
from resconf.conformance.outputs import unwritable
from resconf.conformance.shards import Shard
from resconf.conformance.results import COVERAGE_KEY, ResultRow, read_results, row_from_record, to_table, \
    write_parquet_atomic

EXIT_OK, EXIT_UNEXPECTED, EXIT_INCOMPLETE = 0, 1, 2


class Incomplete(ValueError):
    """The files are not one whole split run."""


def read_shards(paths: list[Path]) -> tuple[list[ResultRow], dict[str, dict]]:
    """Every file's rows and coverage; a file that is not one shard's results is an Incomplete naming it."""
    rows, coverage = [], {}
    for path in paths:
        try:
            mine, cover = _read_shard(path)
        except (OSError, ValueError) as exc:
            text = str(getattr(exc, "strerror", None) or exc)
            text = "cannot read it" if text == str(path) else text  # pyarrow's FileNotFoundError says only the name
            raise Incomplete(text if text.startswith(f"{path}:") else f"{path}: {text}") from None
        rows += mine
        for backend, entry in cover.items():
            coverage.setdefault(backend, entry)
    return rows, coverage


def _read_shard(path: Path) -> tuple[list[ResultRow], dict[str, dict]]:
    rows = [row_from_record(r) for r in read_results(path).to_pylist()]
    if not rows:
        raise ValueError(f"{path}: holds no result rows; expected the results of a `resconf check --shard K/N` run")
    for shard in sorted({r.shard for r in rows} - {""}):  # "" (an unsharded run) is check_complete's to refuse
        try:
            Shard.parse(shard)
        except ValueError:
            raise ValueError(f"{path}: shard {shard!r} in its rows; expected K/N with 1 <= K <= N, as "
                             f"`resconf check --shard K/N` writes it") from None
    return rows, _coverage(path, pq.read_schema(path).metadata or {})


def _coverage(path: Path, meta: dict[bytes, bytes]) -> dict[str, dict]:
    """The file's coverage metadata: {backend: {"expected": [[property, dtype], ...], "filtered": bool}}."""
    try:
        coverage = json.loads(meta.get(COVERAGE_KEY, b"{}"))
    except ValueError:
        coverage = None
    ok = isinstance(coverage, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("filtered"), bool) and isinstance(entry.get("expected"), list)
        and all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                for pair in entry["expected"])
        for entry in coverage.values())
    if not ok:
        raise ValueError(f"{path}: coverage metadata ({COVERAGE_KEY.decode()}) is not what `resconf check` writes; "
                         f"expected a JSON object {{backend: {{\"expected\": [[property, dtype], ...], "
                         f"\"filtered\": true|false}}}}")
    return coverage


def check_complete(rows: list[ResultRow]) -> None:
    """Every backend's shards are 1..N exactly once, all of one N, and no case ran in two shards."""
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        seen[row.backend].add(row.shard)
    for backend, shards in sorted(seen.items()):
        if "" in shards:
            raise Incomplete(f"backend {backend}: a file holds an unsharded run; merge takes the files of "
                             f"`resconf check --shard K/N` runs")
        counts = {s.split("/")[1] for s in shards}
        if len(counts) != 1:
            raise Incomplete(f"backend {backend}: shards of different splits: {', '.join(sorted(shards))}")
        n = int(counts.pop())
        missing = [f"{k}/{n}" for k in range(1, n + 1) if f"{k}/{n}" not in shards]
        if missing:
            have = ", ".join(sorted(shards))
            raise Incomplete(f"backend {backend}: shard {', '.join(missing)} missing (have {have})")
    twice = [key for key, n in Counter((r.backend, r.test) for r in rows if r.test != "-").items() if n > 1]
    if twice:
        backend, test = twice[0]
        raise Incomplete(f"backend {backend}: {test} has more than one row ({len(twice)} such cases): a shard "
                         f"given twice, or shards split with different durations files")


def merge(rows: list[ResultRow], coverage: dict[str, dict]) -> tuple[list[ResultRow], list[str]]:
    """One run id for all rows; per-shard coverage rows replaced by the guard on the union."""
    run_id = min(r.run_id for r in rows) + "-merged"
    kept, seen = [], set()
    for row in rows:
        key = (row.backend, row.property, row.config, row.message)
        if row.property == "GUARD" and (row.config.startswith("covers=") or key in seen):
            continue  # coverage is judged again below; a module skipped at collection is said once
        seen.add(key)
        kept.append(dataclasses.replace(row, run_id=run_id))
    notes = []
    for backend, cover in sorted(coverage.items()):
        mine = [r for r in kept if r.backend == backend]
        have = {(r.property, r.dtype) for r in mine}
        missing = [(p, d) for p, d in cover["expected"] if (p, d) not in have]
        opts = CheckOptions(backends=(backend,), device=mine[0].device, profile=mine[0].profile)
        if missing and cover["filtered"]:
            notes.append(f"backend {backend}: warning: -k/-m chose a subset: {len(missing)} (property, dtype) "
                         f"pairs have no result")
        for prop, dtype in missing if not cover["filtered"] else []:
            kept.append(harness_row(backend, opts, run_id, "GUARD", f"no result for {prop} in {dtype} in any "
                                    f"shard", dtype=dtype, config=f"covers={prop}"))
        nothing = guard.tested_nothing(mine)
        if nothing:
            kept.append(harness_row(backend, opts, run_id, "GUARD", nothing, config="covers=*"))
    return kept, notes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="resconf merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", type=Path, metavar="SHARD.parquet")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.parquet")
    args = parser.parse_args(argv)
    if problem := unwritable(args.output, "-o"):  # before reading: a folder or read-only place fails at once
        print(f"resconf merge: {problem}; nothing written", file=sys.stderr)
        return 2
    try:
        rows, coverage = read_shards(args.shards)
        check_complete(rows)
    except (Incomplete, OSError, ValueError) as exc:
        print(f"resconf merge: {exc}; nothing written", file=sys.stderr)
        return EXIT_INCOMPLETE
    merged, notes = merge(rows, coverage)
    write_parquet_atomic(to_table(merged), args.output, {COVERAGE_KEY: json.dumps(coverage, sort_keys=True)})
    print(summary.matrix(merged))
    for note in notes:
        print(note)
    fails = summary.failures(merged)
    if fails:
        print("Unexpected results:\n" + fails)
    print(f"merged {len(args.shards)} files, {len(merged)} rows: {args.output}")
    return EXIT_UNEXPECTED if any(r.outcome in summary.UNEXPECTED for r in merged) else EXIT_OK

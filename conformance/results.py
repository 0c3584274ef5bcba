"""The results table: one row per (run, backend, device, dtype, mode, property, configuration).

This schema is a public interface (docs/results.md). Bump SCHEMA_VERSION on any change; readers
upgrade older versions in `read_results`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from resconf.backends.modes import DEFAULT_MODE

SCHEMA_VERSION = 4  # 2: provenance, a typed timestamp; 3: suite_commit, ci_job; 4: mode (older files upgraded on reading)
SPEC_VERSION = "2026.11"  # the property catalogue (docs/spec.md) these IDs refer to
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")
# File metadata: per backend, every (property, dtype) the whole selection covers; `resconf merge` checks
# that a sharded run's shards together cover it.
COVERAGE_KEY = b"resconf_coverage"


@dataclass(frozen=True)
class ResultRow:
    run_id: str
    backend: str
    device: str
    dtype: str
    property: str  # e.g. "GR-2"
    test: str  # the pytest node id
    config: str  # the fixed configuration of this case; drawn dimensions are '*'
    outcome: str  # one of OUTCOMES
    measured: float | None  # the worst value seen over all examples
    bound: float | None  # what it was compared with
    comparison: str  # how: "<=", ">=", "==" (bitwise: measured = mismatching elements, bound = 0)
    worst_config: str  # the drawn configuration that gave `measured`
    counterexample: str  # hypothesis' minimal falsifying example (failures only)
    message: str  # first line of the failure or skip reason
    rerun: str  # one command reproducing this case
    seed: str  # hypothesis seed / reproduce_failure blob
    examples: int  # examples run
    duration_s: float
    curve_x: list[float] = field(default_factory=list)  # recorded curves (GR-3, VG-3): depth
    curve_y: list[float] = field(default_factory=list)  # ... and value
    curve_label: list[str] = field(default_factory=list)  # ... and which series each point belongs to
    mode: str = DEFAULT_MODE  # the execution mode (backends/modes.py): eager, compile, autocast, ...
    suite_version: str = ""  # resconf's version (from git: setuptools-scm)
    spec_version: str = SPEC_VERSION
    schema_version: int = SCHEMA_VERSION
    backend_versions: str = ""  # JSON object: framework -> version
    python_version: str = ""
    machine: str = ""
    timestamp: str = ""  # ISO 8601, UTC; a typed timestamp column in the Parquet file
    # Provenance, the same for every row of a run (conformance/provenance.py fills them in):
    profile: str = ""  # hypothesis profile: ci, nightly, ...
    selection: str = ""  # what narrowed the run: -k/-m and extra pytest arguments; "" = the whole suite
    shard: str = ""  # "K/N" for one shard of a split run; "" = not split
    code_commit: str = ""  # git commit of the folder the check ran in (the user's project); "-dirty" if edited
    suite_commit: str = ""  # resconf's own commit (the suite that checked it)
    ci_job: str = ""  # the URL of the CI job that ran the check; "" outside CI
    cpu_model: str = ""
    blas: str = ""  # the BLAS NumPy was built with
    gpu: str = ""  # GPU model and driver when one was asked for (--device cuda); "" otherwise

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


SCHEMA = pa.schema([
    ("run_id", pa.string()), ("backend", pa.string()), ("device", pa.string()), ("dtype", pa.string()),
    ("property", pa.string()), ("test", pa.string()), ("config", pa.string()), ("outcome", pa.string()),
    ("measured", pa.float64()), ("bound", pa.float64()), ("comparison", pa.string()),
    ("worst_config", pa.string()), ("counterexample", pa.string()), ("message", pa.string()),
    ("rerun", pa.string()), ("seed", pa.string()), ("examples", pa.int64()), ("duration_s", pa.float64()),
    ("curve_x", pa.list_(pa.float64())), ("curve_y", pa.list_(pa.float64())),
    ("curve_label", pa.list_(pa.string())), ("mode", pa.string()),
    ("suite_version", pa.string()), ("spec_version", pa.string()), ("schema_version", pa.int64()),
    ("backend_versions", pa.string()), ("python_version", pa.string()), ("machine", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("profile", pa.string()), ("selection", pa.string()), ("shard", pa.string()), ("code_commit", pa.string()),
    ("suite_commit", pa.string()), ("ci_job", pa.string()), ("cpu_model", pa.string()), ("blas", pa.string()),
    ("gpu", pa.string()),
], metadata={"resconf_schema_version": str(SCHEMA_VERSION)})

assert SCHEMA.names == [f.name for f in dataclasses.fields(ResultRow)], "schema and ResultRow drifted apart"


# A null where the writer always puts a value (hand-made or damaged files) reads as that type's empty value.
EMPTY = {f.name: ([] if pa.types.is_list(f.type) else "") for f in SCHEMA
         if pa.types.is_list(f.type) or pa.types.is_string(f.type)}


def row_from_record(record: dict) -> ResultRow:
    """A row of a read table (`to_pylist()`) as ResultRow holds it: the typed timestamp back to ISO 8601
    text, nulls as empty values."""
    stamp = record.get("timestamp")
    record = {**record, "timestamp": stamp.isoformat(timespec="seconds") if isinstance(stamp, datetime) else ""}
    return ResultRow(**{k: EMPTY[k] if v is None and k in EMPTY else v for k, v in record.items()})


def rows_from_jsonl(path: Path) -> list[ResultRow]:
    """Rows a worker appended line by line; a torn last line (the worker was killed) is dropped."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(ResultRow(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return rows


def to_table(rows: Iterable[ResultRow]) -> pa.Table:
    columns = {name: [] for name in SCHEMA.names}
    for row in rows:
        for name in SCHEMA.names:
            columns[name].append(getattr(row, name))
    columns["timestamp"] = [datetime.fromisoformat(t) if t else None for t in columns["timestamp"]]
    return pa.table(columns, schema=SCHEMA)


def write_parquet_atomic(table: pa.Table, path: Path, metadata: dict[bytes, str] | None = None) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new one.
    `metadata` is added to the file's schema metadata."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(path: Path) -> pa.Table:
    """Read a results file in the current schema; an older version's file is upgraded (docs/results.md)."""
    table = pq.read_table(path)
    version = int((table.schema.metadata or {}).get(b"resconf_schema_version", b"0"))
    if version in (1, 2, 3):
        return upgrade(table, version)
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema version {version}; this resconf reads versions 1 to "
                         f"{SCHEMA_VERSION} (a newer resconf wrote it? upgrade resconf)")
    return table


def upgrade(table: pa.Table, version: int) -> pa.Table:
    """Version 1 -> current: the ISO 8601 timestamp string becomes a typed timestamp. Versions 1 to 3 -> current:
    the columns they did not record (provenance; suite_commit and ci_job) are empty, and mode is eager (the
    only mode there was); schema_version keeps saying what the file was written as."""
    columns = {name: table[name] for name in table.column_names if name in SCHEMA.names}
    if version == 1:
        text = table["timestamp"]
        columns["timestamp"] = pc.if_else(pc.equal(text, ""), None, text).cast(pa.timestamp("us", tz="UTC"))
    columns.setdefault("mode", pa.array([DEFAULT_MODE] * table.num_rows, pa.string()))
    for name in SCHEMA.names:
        columns.setdefault(name, pa.array([""] * table.num_rows, pa.string()))
    return pa.table([columns[name] for name in SCHEMA.names], schema=SCHEMA)

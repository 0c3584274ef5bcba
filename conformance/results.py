"""The results table: one row per (run, backend, device, dtype, property, configuration).

This schema is a public interface (docs/results.md). Bump SCHEMA_VERSION on any change; readers
upgrade older versions in `read_results`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
SPEC_VERSION = "2026.11"  # the property catalogue (docs/spec.md) these IDs refer to
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")


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
    suite_version: str = ""
    spec_version: str = SPEC_VERSION
    schema_version: int = SCHEMA_VERSION
    backend_versions: str = ""  # JSON object: framework -> version
    python_version: str = ""
    machine: str = ""
    timestamp: str = ""  # ISO 8601, UTC

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


SCHEMA = pa.schema([
    ("run_id", pa.string()), ("backend", pa.string()), ("device", pa.string()), ("dtype", pa.string()),
    ("property", pa.string()), ("test", pa.string()), ("config", pa.string()), ("outcome", pa.string()),
    ("measured", pa.float64()), ("bound", pa.float64()), ("comparison", pa.string()),
    ("worst_config", pa.string()), ("counterexample", pa.string()), ("message", pa.string()),
    ("rerun", pa.string()), ("seed", pa.string()), ("examples", pa.int64()), ("duration_s", pa.float64()),
    ("curve_x", pa.list_(pa.float64())), ("curve_y", pa.list_(pa.float64())),
    ("curve_label", pa.list_(pa.string())),
    ("suite_version", pa.string()), ("spec_version", pa.string()), ("schema_version", pa.int64()),
    ("backend_versions", pa.string()), ("python_version", pa.string()), ("machine", pa.string()),
    ("timestamp", pa.string()),
], metadata={"resconf_schema_version": str(SCHEMA_VERSION)})

assert SCHEMA.names == [f.name for f in dataclasses.fields(ResultRow)], "schema and ResultRow drifted apart"


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
    return pa.table(columns, schema=SCHEMA)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new one."""
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
    """Read a results file, checking its schema version."""
    table = pq.read_table(path)
    version = int((table.schema.metadata or {}).get(b"resconf_schema_version", b"0"))
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema version {version}, this resconf reads {SCHEMA_VERSION}")
    return table

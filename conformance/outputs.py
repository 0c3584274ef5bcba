"""Where `resconf check` writes, checked before any work: a run that cannot write its results finds out in
a second, not after an hour, and resconf never overwrites a file it did not write itself. When the final
write fails all the same (a full disk), the rows are kept elsewhere rather than lost.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

SUMMARY_HEADER = "resconf check summary"  # the first line of every summary file: ours to replace


def unwritable(path: Path, what: str) -> str | None:
    """Why `path` cannot be written, or None. Creates and removes a file in the nearest folder that exists
    (the write creates the rest): a read-only folder shows up now, and nothing is left behind."""
    if path.is_dir():
        return f"{what} {path} is a folder; give a file name"
    existing = next(p for p in path.parents if p.exists())  # '.' or '/' at worst
    if not existing.is_dir():
        return f"{what} {path}: {existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        return f"{what} {path} cannot be written: {exc.strerror or exc}"
    return None


def not_ours(output: Path, summary: Path) -> str | None:
    """Why writing `output` and its `summary` would replace a file resconf did not write, or None."""
    if output.is_file() and not _is_results(output):
        return f"--output {output} exists and is not a resconf results file; give another name or delete it"
    if summary.is_file() and not _is_summary(summary):
        return (f"--output {output}: {summary} (its summary's name) exists and is not a resconf summary; "
                f"give another --output or move that file")
    return None


def _is_results(path: Path) -> bool:
    import pyarrow.parquet as pq  # here: the durations code imports this module in every pytest session

    try:
        return b"resconf_schema_version" in (pq.read_schema(path).metadata or {})
    except Exception:  # not Parquet at all: pyarrow raises its own error types
        return False


def _is_summary(path: Path) -> bool:
    text = path.read_text(errors="replace")
    # Before the header line existed, a summary ended with the report hint.
    return text.startswith(SUMMARY_HEADER) or "\nreport:  resconf report " in text


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a unique temporary file beside `path`, then rename: two runs writing the same name
    never mix, and a reader sees the old file or the new one."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        f.write(data)
    try:
        os.chmod(f.name, 0o644)  # NamedTemporaryFile makes it private; results are for sharing
        os.replace(f.name, path)
    except BaseException:
        Path(f.name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def keep_rows(records: Iterable[str]) -> str:
    """Save the run's rows (JSON lines) in the system's temporary folder, when the output could not take
    them; returns where, or why that failed too."""
    try:
        with tempfile.NamedTemporaryFile("w", prefix="resconf-rows-", suffix=".jsonl", delete=False) as f:
            f.writelines(f"{record}\n" for record in records)
        return f"its rows are kept in {f.name}"
    except OSError as exc:
        return f"and its rows could not be kept either ({exc.strerror or exc})"

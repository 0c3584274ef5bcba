"""Expected-failure files: a backend's known, reasoned deviations from the catalogue.

TOML, one [[xfail]] table per entry:

    [[xfail]]
    property = "ID-1"                        # required: the property ID
    test = "test_identity_subnormal"         # optional: the test function (prefix of the test name)
    dtype = "float32"                        # optional: one dtype
    config = "branch=attention"              # optional: key=value pairs (comma-separated) the case's
                                             #   parameters must have
    backend = "jax"                          # optional in a backend's own file, required in --xfails files
                                             #   that cover several backends
    reason = "XLA:CPU flushes subnormals"    # required: why this is expected

Built-in backends ship theirs as conformance/xfails/<name>.toml. Matched cases run as strict xfails:
a case that starts passing fails the run (the entry is stale), and so does an entry matching nothing.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

BUILTIN_DIR = Path(__file__).parent / "xfails"


@dataclass(frozen=True)
class XfailEntry:
    property: str
    reason: str
    source: str
    test: str | None = None
    dtype: str | None = None
    backend: str | None = None
    config: str | None = None

    def describe(self) -> str:
        keys = ("backend", "property", "test", "dtype", "config")
        return ", ".join(f"{k}={getattr(self, k)}" for k in keys if getattr(self, k) is not None)

    def matches(self, backend: str, prop: str, test_name: str, params: dict) -> bool:
        wanted = dict(pair.split("=", 1) for pair in self.config.split(",")) if self.config else {}
        return (self.property == prop and (self.backend is None or self.backend == backend)
                and (self.test is None or test_name.startswith(self.test))
                and (self.dtype is None or self.dtype == params.get("dtype"))
                and all(str(params.get(k.strip())) == v.strip() for k, v in wanted.items()))


def parse(path: Path, backend: str | None = None) -> list[XfailEntry]:
    """Entries of one file; `backend` fills in the backend of a backend's own file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError(f"expected-failure file {path}: {exc}") from None
    entries = []
    for i, raw in enumerate(data.get("xfail", [])):
        missing = [k for k in ("property", "reason") if not str(raw.get(k, "")).strip()]
        unknown = set(raw) - {"property", "reason", "test", "dtype", "backend", "config"}
        if missing or unknown:
            raise pytest.UsageError(f"{path}: entry {i + 1} needs property and reason; "
                                    f"missing {missing}, unknown keys {sorted(unknown)}")
        entries.append(XfailEntry(source=str(path), backend=raw.get("backend", backend),
                                  **{k: raw[k] for k in ("property", "reason", "test", "dtype", "config") if k in raw}))
    return entries


def load(backend_names: list[str], extra_files: list[Path]) -> list[XfailEntry]:
    entries = []
    for name in backend_names:
        builtin = BUILTIN_DIR / f"{name}.toml"
        if builtin.exists():
            entries += parse(builtin, backend=name)
    for path in extra_files:
        entries += parse(path)
    return entries


def apply(entries: list[XfailEntry], items: list[pytest.Item], params_of: Callable, property_of: Callable
          ) -> list[XfailEntry]:
    """Mark matching items as strict xfails; return the entries that matched nothing."""
    used = set()
    for item in items:
        params = params_of(item)
        for entry in entries:
            if entry.matches(str(params.get("backend_name")), property_of(item), item.name, params):
                item.add_marker(pytest.mark.xfail(reason=entry.reason, strict=True))
                used.add(entry)
                break
    return [e for e in entries if e not in used]

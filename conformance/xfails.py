"""Expected-failure files: a backend's known, reasoned deviations from the catalogue.

TOML, one [[xfail]] table per entry:

    [[xfail]]
    property = "ID-1"                        # required: a property ID the suite checks (docs/spec.md)
    test = "test_identity_subnormal"         # optional: the test function (prefix of the test name)
    dtype = "float32"                        # optional: one dtype
    mode = "compile"                         # optional: one execution mode (backends/modes.py); without it
                                             #   the entry covers the case in every mode
    config = "branch=attention"              # optional: key=value pairs (comma-separated) the case's
                                             #   parameters must have
    backend = "jax"                          # optional in a backend's own file, required in --xfails files
                                             #   that cover several backends: the backend's own name (its
                                             #   `name`), or the spelling given to --backend
    reason = "XLA:CPU flushes subnormals"    # required: why this is expected
    strict = false                           # optional, default true: the deviation shows on some machines
                                             #   or draws only (the reason says which): a pass there is
                                             #   recorded passed, its message saying the entry did not
                                             #   occur, instead of failing the run as stale

Every value is a string but `strict`, a boolean. Built-in backends ship theirs as conformance/xfails/<name>.toml, by the backend's
own name, so it applies whichever spelling selected the backend. Matched cases run as strict xfails: a
case that starts passing fails the run (the entry is stale), and so does an entry matching nothing.

An adapter that wraps a framework says so (`inherits_xfails = "torch"` on its Backend class) and gets that
built-in file's entries, inherited: their reasons say where they come from, and since the adapter may not hit
the framework's deviation (its own kernel) or claim that feature at all, an inherited entry is not strict
(a pass is recorded passed, its message saying so) and is never stale.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest

from resconf.backends.config import DTYPES
from resconf.backends.modes import DEFAULT_MODE, MODES
from resconf.conformance import catalogue

SUITE_DIR = Path(__file__).parent
BUILTIN_DIR = SUITE_DIR / "xfails"
KEYS = ("property", "reason", "test", "dtype", "mode", "backend", "config", "strict")
INHERITED = "inherited from "  # how an inherited entry's reason starts: "inherited from torch: ..."


@dataclass(frozen=True)
class XfailEntry:
    property: str
    reason: str
    source: str
    test: str | None = None
    dtype: str | None = None
    mode: str | None = None
    backend: str | None = None
    config: str | None = None
    inherited_from: str = ""  # the framework whose built-in file it comes from (`inherits_xfails`); "" if its own
    declared_strict: bool = True  # the file's `strict`: false where the deviation depends on the machine

    @property
    def strict(self) -> bool:
        return self.declared_strict and not self.inherited_from

    def describe(self) -> str:
        keys = ("backend", "property", "test", "dtype", "mode", "config")
        return ", ".join(f"{k}={getattr(self, k)}" for k in keys if getattr(self, k) is not None)

    def matches(self, backend_names: frozenset[str], prop: str, test_name: str, params: dict) -> bool:
        """Whether the entry covers a case of the backend known here by `backend_names` (its own name and
        the spelling that selected it)."""
        wanted = config_pairs(self.config) if self.config else {}
        return (self.property == prop and (self.backend is None or self.backend in backend_names)
                and (self.test is None or test_name.startswith(self.test))
                and (self.dtype is None or self.dtype == params.get("dtype"))
                and (self.mode is None or self.mode == params.get("mode", DEFAULT_MODE))
                and all(str(params.get(k)) == v for k, v in wanted.items()))


def parse(path: Path, backend: str | None = None) -> list[XfailEntry]:
    """Entries of one file; `backend` fills in the backend of a backend's own file. Every mistake is a
    one-line UsageError naming the file, the entry and what was expected."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError(f"expected-failure file {path}: {exc}") from None
    unknown = sorted(set(data) - {"xfail"})
    if unknown:
        raise pytest.UsageError(f"{path}: unknown top-level key {unknown[0]!r}; expected only [[xfail]] entries")
    raws = data.get("xfail", [])
    if not isinstance(raws, list):
        what = "a single table ([xfail])" if isinstance(raws, dict) else _kind(raws)
        raise pytest.UsageError(f"{path}: xfail is {what}; expected an array of tables: write each entry "
                                "under [[xfail]]")
    return [_entry(raw, f"{path}: entry {i}", str(path), backend) for i, raw in enumerate(raws, 1)]


def _entry(raw, where: str, source: str, backend: str | None) -> XfailEntry:
    if not isinstance(raw, dict):
        raise pytest.UsageError(f"{where} is {_kind(raw)}; expected a table of key = value lines under [[xfail]]")
    missing = [k for k in ("property", "reason") if not str(raw.get(k, "")).strip()]
    unknown = set(raw) - set(KEYS)
    if missing or unknown:
        raise pytest.UsageError(f"{where} needs property and reason; missing {missing}, unknown keys {sorted(unknown)}")
    if not isinstance(raw.get("strict", True), bool):
        raise pytest.UsageError(f"{where}: strict = {raw['strict']!r} is {_kind(raw['strict'])}; expected true or false")
    for key, value in raw.items():
        if key != "strict" and not isinstance(value, str):
            raise pytest.UsageError(f"{where}: {key} = {value!r} is {_kind(value)}; expected a string")
    if raw["property"] not in property_ids():
        raise pytest.UsageError(f"{where}: unknown property {raw['property']!r}; expected a property ID of the "
                                f"catalogue (docs/spec.md): {', '.join(sorted(property_ids()))}")
    if raw.get("dtype", DTYPES[0]) not in DTYPES:
        raise pytest.UsageError(f"{where}: dtype {raw['dtype']!r} is not a dtype; expected one of {', '.join(DTYPES)}")
    if raw.get("mode", DEFAULT_MODE) not in MODES:
        raise pytest.UsageError(f"{where}: mode {raw['mode']!r} is not a mode; expected one of {', '.join(MODES)}")
    if "config" in raw:
        config_pairs(raw["config"], where)
    return XfailEntry(source=source, backend=raw.get("backend", backend), declared_strict=raw.get("strict", True),
                      **{k: raw[k] for k in KEYS if k in raw and k not in ("backend", "strict")})


def config_pairs(config: str, where: str = "config") -> dict[str, str]:
    """`branch=attention,init=zero` as a dict; a UsageError naming `where` if it is not such pairs."""
    pairs = [pair.split("=", 1) for pair in config.split(",")]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise pytest.UsageError(f"{where}: config {config!r} is not key=value pairs; expected e.g. "
                                '"branch=attention" or "placement=pre,init=zero"')
    return {k.strip(): v.strip() for k, v in pairs}


def _kind(value) -> str:
    """A TOML value's type, in TOML's words."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return next((name for t, name in names.items() if isinstance(value, t)), f"a {type(value).__name__}")


def property_ids() -> frozenset[str]:
    """The property IDs the suite implements: the catalogue's (tests/test_catalogue.py holds it to the tests'
    `@pytest.mark.property` and to docs/spec.md)."""
    return frozenset(catalogue.BY_ID)


def load(backend_names: list[str], extra_files: list[Path]) -> list[XfailEntry]:
    """The built-in files of `backend_names` (conformance/xfails/<name>.toml) and the user's files."""
    entries = []
    for name in backend_names:
        builtin = BUILTIN_DIR / f"{name}.toml"
        if builtin.exists():
            entries += parse(builtin, backend=name)
    for path in extra_files:
        entries += parse(path)
    return entries


def inherited(backend: str, framework: str) -> list[XfailEntry]:
    """The built-in entries of `framework` (conformance/xfails/<framework>.toml) for the adapter named
    `backend` that wraps it, each marked inherited in its reason."""
    path = BUILTIN_DIR / f"{framework}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
        raise pytest.UsageError(f"backend {backend!r}: inherits_xfails = {framework!r} names no built-in "
                                f"expected-failure file; expected one of: {known}")
    return [replace(e, reason=f"{INHERITED}{framework}: {e.reason}", inherited_from=framework)
            for e in parse(path, backend=backend)]


def for_session(names: dict[str, str], extra_files: list[Path],
                inherits: dict[str, str] | None = None) -> list[XfailEntry]:
    """The entries for a session's backends, `names` mapping the spelling that selected each (a built-in
    name, an entry point, pkg.mod:Class) to its own name (its `name`). Built-in files go by the own name, so
    they apply whatever the spelling; a user's entry may name the backend either way. Entries naming
    another backend (a file shared by several) are left out. `inherits` maps an own name to the framework
    whose entries it inherits (its `inherits_xfails`); its own entries come first, so they win a match."""
    known = set(names) | set(names.values())
    entries = load(sorted(set(names.values())), extra_files)
    entries += [e for own, framework in sorted((inherits or {}).items()) for e in inherited(own, framework)]
    return [e for e in entries if e.backend is None or e.backend in known]


def apply(entries: list[XfailEntry], items: list[pytest.Item], params_of: Callable, property_of: Callable,
          names_of: Callable[[str], frozenset[str]]) -> list[XfailEntry]:
    """Mark matching items as strict xfails; return the entries that matched nothing. `names_of` gives
    every name the backend of an item's `backend_name` parameter goes by in this session."""
    used = set()
    for item in items:
        params = params_of(item)
        names = names_of(str(params.get("backend_name")))
        for entry in entries:
            if entry.matches(names, property_of(item), item.name, params):
                item.add_marker(pytest.mark.xfail(reason=entry.reason, strict=entry.strict))
                used.add(entry)
                break
    return [e for e in entries if e not in used and not e.inherited_from]

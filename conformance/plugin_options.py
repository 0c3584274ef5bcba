"""The plugin's command-line options (all `--resconf-*`: a user's conftest may define --backend and the like)."""
from __future__ import annotations

import pytest

from resconf.backends.base import DEVICES
from resconf.backends.modes import ALL, DEFAULT_MODE, MODES


def selected_modes(config: pytest.Config) -> tuple[str, ...]:
    """The modes --resconf-mode asks for, in the catalogue's order (backends/modes.MODES); eager by default."""
    asked = set(config.getoption("--resconf-mode") or [DEFAULT_MODE])
    unknown = sorted(asked - set(MODES) - {ALL})
    if unknown:
        raise pytest.UsageError(f"--resconf-mode {unknown[0]}: unknown mode; expected one of {', '.join(MODES)} "
                                f"or {ALL}")
    return tuple(m for m in MODES if ALL in asked or m in asked)
from resconf.conformance import gate, profiles
from resconf.conformance.shards import DURATIONS_FILE


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("resconf", "resconf conformance")
    group.addoption("--resconf-backend", action="append", default=[], metavar="NAME",
                    help="backend to check: a built-in name, an entry point, or package.module:attr (repeatable)")
    group.addoption("--resconf-device", default="cpu", choices=DEVICES,
                    help="device the backends run on (default cpu)")
    group.addoption("--resconf-mode", action="append", default=[], metavar="NAME",
                    help=f"execution mode to run each case in, if the backend claims it: one of {', '.join(MODES)}, "
                         f"or {ALL} for every mode (repeatable; default {DEFAULT_MODE}; backends/modes.py)")
    group.addoption("--resconf-max-examples", type=int, default=None, metavar="N",
                    help="examples per property, overriding the profile's (heavy properties run a fraction)")
    group.addoption("--resconf-profile", default=profiles.DEFAULT, choices=profiles.PROFILES,
                    help=f"hypothesis profile (default {profiles.DEFAULT}, as for resconf check)")
    group.addoption("--resconf-cover", default=None, choices=gate.STRENGTHS,
                    help="which cases run: every pair of parameter values (pairs, the ci profile's default), every "
                         "value once (each), or every case (all, every other profile's default); conformance/gate.py")
    group.addoption("--resconf-shrink", action="store_true",
                    help="shrink each failing example to a minimal one (ci, smoke and calibrate report the first "
                         "failing example; dev and nightly always shrink)")
    group.addoption("--resconf-no-reference-cache", action="store_true",
                    help="compute every oracle result and baseline afresh (by default the derandomised profiles, ci "
                         "and smoke, keep them in .resconf/cache/references/ for every backend and later run)")
    group.addoption("--resconf-xfails", action="append", default=[], metavar="FILE",
                    help="expected-failure file (TOML) on top of the backend's built-in one (repeatable)")
    group.addoption("--resconf-skip-xfails", action="store_true", help="ignore every expected-failure entry")
    group.addoption("--resconf-results-jsonl", default=None, metavar="FILE",
                    help="append one JSON result row per test to FILE (resconf check merges them into Parquet)")
    group.addoption("--resconf-run-id", default=None, help="run id written into every result row")
    group.addoption("--resconf-events-jsonl", default=None, metavar="FILE",
                    help="append what was collected and which case starts and ends to FILE (for resconf check)")
    group.addoption("--resconf-shard", default=None, metavar="K/N",
                    help="run shard K of N: the selected cases split in N, balanced by --resconf-durations-file")
    group.addoption("--resconf-durations-file", default=None, metavar="FILE",
                    help=f"recorded case durations that balance the shards (default {DURATIONS_FILE} "
                         "in the folder pytest runs from, when present)")
    group.addoption("--resconf-already-run", default=None, metavar="FILE",
                    help="node ids (one a line) to leave out: resuming a worker that crashed")

"""Whether a documented command's arguments parse, by the program's own parser, without running it.

resconf's subcommands (argparse parsers built inside each main(), stopped right after parse_args), asv's
(asv.commands.make_argparser), pytest's (its config parsing: plugins and conftest loaded, nothing collected,
in a process of its own), and bash scripts (`bash -n`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

from tests.doc_commands import ENV, REPO


def argv(command: str) -> list[str]:
    """The words a shell would pass, leading VAR=value assignments dropped, `$(...)` as one word."""
    words = shlex.split(re.sub(r"\$\([^)]*\)", "SUBSTITUTED", command))
    while words and ENV.match(words[0]):
        words.pop(0)
    return words


def parse_errors(commands: list[str]) -> dict[str, str | None]:
    """For each command, None when the program's own parser accepts its arguments, else what it said."""
    pytests = [c for c in commands if argv(c)[0] == "pytest"]  # one process for all: ~2 s each to start
    found = dict(zip(pytests, pytest_parse_errors([argv(c)[1:] for c in pytests])))
    return {c: found[c] if c in found else _parse_error(c) for c in commands}


def _parse_error(command: str) -> str | None:
    try:
        return _program_parse_error(command)
    except Exception as exc:  # e.g. asv not installed: that command's failure, not every one's
        return f"{type(exc).__name__}: {exc}"


def _program_parse_error(command: str) -> str | None:
    words = argv(command)
    program, args = words[0], words[1:]
    if program == "resconf":
        from resconf.conformance.cli import main
        return _argparse_error(lambda: main(args))
    if program == "asv":
        from asv.commands import make_argparser
        return _argparse_error(lambda: make_argparser()[0].parse_args(args))
    if program in ("bash", "sh"):
        proc = subprocess.run([program, "-n", args[0]], cwd=REPO, capture_output=True, text=True)
        return (proc.stderr or f"exit status {proc.returncode}") if proc.returncode else None
    return f"no parser for {program!r}: classify the command as Run or NotRun instead"


class _Parsed(Exception):
    """Raised in place of running a subcommand once its parser has accepted the arguments."""


def _argparse_error(call) -> str | None:
    # Each resconf subcommand builds its parser inside its main(): let main() run up to parse_args, then stop.
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):
        original(self, *a, **k)
        raise _Parsed

    err, out = io.StringIO(), io.StringIO()
    try:
        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            status = call()
    except _Parsed:
        return None
    except SystemExit as exc:
        return None if exc.code in (0, None) else err.getvalue() or f"exit status {exc.code}"
    return None if status in (0, None) else f"exited {status} before parsing: {err.getvalue() or out.getvalue()}"


def pytest_parse_errors(arg_lists: list[list[str]]) -> list[str | None]:
    """pytest's parser (plugins and conftest loaded, nothing collected), in a process of its own."""
    with tempfile.TemporaryDirectory() as tmp:  # a file, not stdout: pytest's fd capture stays on after parsing
        out = Path(tmp) / "errors.json"
        proc = subprocess.run([sys.executable, "-m", "tests.doc_parsers", json.dumps(arg_lists), str(out)],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode or not out.exists():
            return [f"the parse helper failed: {proc.stderr}"] * len(arg_lists)
        return json.loads(out.read_text())


def _pytest_parse(args: list[str]) -> str | None:
    from _pytest.config import _prepareconfig  # private, but the only way to parse without collecting

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            config = _prepareconfig(args)
    except BaseException as exc:  # pytest reports usage errors as UsageError or SystemExit
        return f"{type(exc).__name__}: {exc} {err.getvalue()}".strip()
    missing = [a for a in config.args if not config.option.pyargs and not Path(a.split("::")[0]).exists()]
    config._ensure_unconfigure()
    return f"no such path: {missing}" if missing else None


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps([_pytest_parse(args) for args in json.loads(sys.argv[1])]))

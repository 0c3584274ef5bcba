"""The commands the docs show, read out of the Markdown, and the three ways the table checks them.

A command is one part of an `&&` chain in a fenced shell block (continuations joined, the trailing
comment dropped; a comment `# or: CMD` names an alternative command), a `run:` line of a YAML block, or
an inline code span that starts with a program and gives it arguments (`pytest tests/test_report.py`;
a bare `resconf check` in prose names the command rather than shows one). A Python block is keyed by its
first line after the imports; a DuckDB query (an inline `SELECT ...`, or a comment `# or DuckDB: SELECT
...` in a Python block) by its text. tests/test_doc_commands.py holds the table saying how each is checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/*.md", "examples/**/README.md")
SHELL, YAML, PYTHON = {"bash", "sh", "shell", "console"}, {"yaml", "yml"}, {"python", "py"}
PROGRAMS = {"resconf", "pytest", "python", "python3", "python3.11", "pip", "asv", "bash", "sh", "cat", "apt-get"}
SUBCOMMANDED = {"resconf", "asv", "pip", "apt-get"}  # `resconf check` alone is a name, not a command
FENCE = re.compile(r"^((?:> ?)*)```(\w*)")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")  # a leading VAR=value
SQL_COMMENT = re.compile(r"#\s*or DuckDB:\s*(SELECT .+)")


@dataclass(frozen=True)
class Run:
    """Run as written in a fresh folder holding `workspace`; expect `status` and the files in `creates`."""
    workspace: str = "empty"
    status: int = 0
    creates: tuple[str, ...] = ()
    heavy: bool = False
    prelude: str = ""  # Python blocks only: the imports a fragment leaves to the reader


@dataclass(frozen=True)
class Parse:
    """Too slow or too big to run: check its arguments with the program's own parser (tests/doc_parsers.py)."""


@dataclass(frozen=True)
class NotRun:
    reason: str


@dataclass(frozen=True)
class Command:
    text: str  # the table key: the command as written, or a Python block's first line after its imports
    where: str  # docs/x.md:LINE
    lang: str = "sh"  # sh, python or sql
    python: str = ""  # the whole block, for Python


def documented(repo: Path = REPO) -> list[Command]:
    paths = sorted({p for pattern in DOCS for p in repo.glob(pattern)})
    return [c for p in paths for c in _commands(p.read_text(), str(p.relative_to(repo)))]


def _commands(text: str, name: str) -> list[Command]:
    found, prose, block, lang, start, quote = [], [], [], None, 0, ""
    for i, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if lang is None and fence:
            lang, quote, start, block = fence[2].lower(), fence[1], i, []
            prose.append("")
        elif lang is not None and line.lstrip("> ").startswith("```"):
            found += _block(lang, block, f"{name}:{start}")
            lang = None
            prose.append("")
        elif lang is not None:
            block.append(line[len(quote):] if line.startswith(quote) else line.lstrip("> "))
            prose.append("")
        else:
            prose.append(line)
    return found + _inline("\n".join(prose), name)


def _block(lang: str, lines: list[str], where: str) -> list[Command]:
    if lang in PYTHON:
        code = [c for c in (_split_unquoted(line, "#")[0].strip() for line in lines) if c]
        first = next((line for line in code if not line.startswith(("import ", "from "))), code[0] if code else "")
        queries = [Command(m[1].strip(), where, "sql") for m in map(SQL_COMMENT.search, lines) if m]
        return [Command(first, where, "python", "\n".join(lines) + "\n")] + queries
    if lang in YAML:
        lines = [m[1] for m in (re.match(r"^\s*(?:- )?run:\s*(.+)$", line) for line in lines) if m]
    elif lang == "console":
        lines = [line.strip()[2:] for line in lines if line.strip().startswith("$ ")]
    elif lang not in SHELL:
        return []
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [Command(part, where) for line in joined.splitlines() for part in _parts(line)]


def _parts(line: str) -> list[str]:
    """`a && b  # or: c` -> [a, b, c]."""
    code, comment = _split_unquoted(line, "#")
    alternative = re.match(r"\s*or:\s*(.+)", comment)
    parts = _split_unquoted_all(code, "&&") + ([alternative[1]] if alternative else [])
    return [p.strip() for p in parts if p.strip()]


def _split_unquoted(line: str, sep: str) -> tuple[str, str]:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif line.startswith(sep, i) and (sep != "#" or i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + len(sep):]
    return line, ""


def _split_unquoted_all(line: str, sep: str) -> list[str]:
    head, tail = _split_unquoted(line, sep)
    return [head] + (_split_unquoted_all(tail, sep) if tail else [])


def _inline(prose: str, name: str) -> list[Command]:
    found = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        words, line = m[1].split(), f"{name}:{prose.count(chr(10), 0, m.start()) + 1}"
        if words and words[0] == "SELECT":
            found.append(Command(" ".join(words), line, "sql"))
            continue
        program = next((w for w in words if not ENV.match(w)), "")
        needed = 3 if program in SUBCOMMANDED else 2
        if program in PROGRAMS and len(words) - words.index(program) >= needed:
            found.append(Command(" ".join(words), line))
    return found

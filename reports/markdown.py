"""The report's tables in GitHub-flavoured Markdown, for a CI job summary ($GITHUB_STEP_SUMMARY). Plots stay
in index.html: a job summary cannot show a local image."""
from __future__ import annotations

import html
import re

from .document import Block, Cell, Detail, Document, Figure, Fold, Paragraph, Table

STATUS_MARK = {"pass": "🟢 ", "fail": "🔴 ", "xfail": "🟠 ", "skip": "⚪ ", "": ""}
FOLD_ROWS = 30  # a longer table starts folded, so the summary stays readable
SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def escape(text: str) -> str:
    """Plain text: Markdown's markup characters escaped, one line (a table cell cannot hold a newline)."""
    return SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _fence(text: str, shortest: int) -> str:
    """A run of backticks longer than any in `text`: nothing inside can close it."""
    return "`" * max(shortest, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)


def code_span(text: str) -> str:
    text = " ".join(text.split())
    fence = _fence(text, 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def link_title(text: str) -> str:
    """A link's hover text, one line: '"' would end it and '|' would split the table cell it sits in."""
    return " ".join(text.split()).replace('"', "'").replace("|", "\\|")


def _cell(cell: Cell) -> str:
    text = escape(cell.text)
    if cell.href and not cell.href.startswith("#"):  # an id in the page: only index.html has them
        title = f' "{link_title(cell.title)}"' if cell.title else ""
        text = f"[{text}]({cell.href.replace(' ', '%20')}{title})"
    return STATUS_MARK[cell.status] + text


def table_md(table: Table) -> str:
    """A GFM table under its caption; a long one folded (GitHub renders <details> in a job summary)."""
    lines = ["| " + " | ".join(escape(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    body = "\n".join(lines)
    if len(table.rows) > FOLD_ROWS:
        return (f"<details><summary><b>{html.escape(table.caption)}</b> ({len(table.rows)} rows)</summary>\n\n"
                f"{body}\n\n</details>")
    return f"**{escape(table.caption)}**\n\n{body}"


def detail_md(detail: Detail) -> str:
    lines = [f"#### {escape(detail.title)}", ""]
    lines += [f"- {escape(k)}: {code_span(v)}" for k, v in detail.fields]
    if detail.command:  # verbatim, newlines kept (a rerun line may be continued with a backslash)
        fence = _fence(detail.command, 3)
        lines += ["", f"{fence}sh", detail.command, fence]
    return "\n".join(lines)


def fold_md(fold: Fold) -> str:
    """GitHub renders <details> in a job summary; the blank lines keep the Markdown inside it Markdown."""
    inner = "\n\n".join(block_md(b) for b in fold.blocks)
    return (f"<details{' open' if fold.open else ''}><summary>{html.escape(fold.summary)}</summary>\n\n"
            f"{inner}\n\n</details>")


def block_md(block: Block) -> str:
    if isinstance(block, Fold):
        return fold_md(block)
    if isinstance(block, Paragraph):
        return escape(block.text)
    if isinstance(block, Table):
        return table_md(block)
    if isinstance(block, Figure):
        return f"_Plot in index.html: {escape(block.caption)}_"
    return detail_md(block)


def render_markdown(document: Document) -> str:
    parts = [f"# {escape(document.title)}", escape(document.intro)]
    if document.warnings:
        parts.append("**Unreadable inputs, left out of this report:**\n\n"
                     + "\n".join(f"- {escape(w)}" for w in document.warnings))
    for section in document.sections:
        parts.append(f"## {escape(section.title)}")
        parts.extend(block_md(b) for b in section.blocks)
    return "\n\n".join(parts) + "\n"

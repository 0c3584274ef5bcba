"""The report as one self-contained HTML page: inline CSS, plots as base64 PNG data URIs, no script, no
network; it opens from disk and can be attached to a CI run as a single file."""
from __future__ import annotations

import base64
from html import escape

from .document import Block, Cell, Detail, Document, Figure, Fold, Paragraph, Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1160px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 36px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td:first-child { white-space: nowrap; }
td.pass { background: #d4edda; } td.fail { background: #f8d0d3; }
td.xfail { background: #ffe8b3; } td.skip { background: #e6e6e6; color: #555; }
.warnings { background: #fff3cd; border: 1px solid #e0c060; padding: 8px 14px; border-radius: 4px; }
.failure { border-left: 4px solid #d9534f; background: #fcf3f3; padding: 6px 12px; margin: 10px 0; }
.failure h3 { font-size: 14px; margin: 4px 0; }
.failure dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 4px 0; }
.failure dt { color: #555; } .failure dd { margin: 0; word-break: break-word; }
pre { background: #272822; color: #f8f8f2; padding: 6px 10px; overflow-x: auto; border-radius: 3px; }
figure { margin: 12px 0 22px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; }
ul.contents { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }
details { margin: 4px 0; } summary { cursor: pointer; padding: 2px 0; } details table { margin-left: 18px; }
a[title] { text-decoration-style: dotted; }
"""


def _cell(tag: str, cell: Cell) -> str:
    css = (f' class="{cell.status}"' if cell.status else "") + (f' id="{escape(cell.anchor)}"' if cell.anchor else "")
    title = f' title="{escape(cell.title)}"' if cell.title else ""
    text = escape(cell.text)
    if cell.href:
        return f'<{tag}{css}><a href="{escape(cell.href)}"{title}>{text}</a></{tag}>'
    return f"<{tag}{css}{title}>{text}</{tag}>"


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "\n".join("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>" for row in table.rows)
    return f"<table>\n<caption>{escape(table.caption)}</caption>\n<tr>{head}</tr>\n{body}\n</table>"


def figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure><img alt="{escape(figure.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(figure.caption)}</figcaption></figure>")


def detail_html(detail: Detail) -> str:
    fields = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in detail.fields)
    command = f"<pre>{escape(detail.command)}</pre>" if detail.command else ""
    return f'<div class="failure"><h3>{escape(detail.title)}</h3><dl>{fields}</dl>{command}</div>'


def fold_html(fold: Fold) -> str:
    inner = "\n".join(block_html(b) for b in fold.blocks)
    return f"<details{' open' if fold.open else ''}><summary>{escape(fold.summary)}</summary>\n{inner}\n</details>"


def block_html(block: Block) -> str:
    if isinstance(block, Fold):
        return fold_html(block)
    if isinstance(block, Paragraph):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Table):
        return table_html(block)
    if isinstance(block, Figure):
        return figure_html(block)
    return detail_html(block)


def render_html(document: Document) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{escape(document.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>",
             f"<h1>{escape(document.title)}</h1>", f"<p>{escape(document.intro)}</p>"]
    if document.warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in document.warnings)
        parts.append(f'<div class="warnings"><strong>Unreadable inputs, left out of this report:</strong>'
                     f"<ul>{items}</ul></div>")
    links = "".join(f'<li><a href="#section-{i}">{escape(s.title)}</a></li>' for i, s in enumerate(document.sections))
    parts.append(f'<nav><ul class="contents">{links}</ul></nav>')
    for i, section in enumerate(document.sections):
        parts.append(f'<section id="section-{i}">\n<h2>{escape(section.title)}</h2>')
        parts.extend(block_html(b) for b in section.blocks)
        parts.append("</section>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)

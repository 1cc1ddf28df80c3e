"""Render the report's sections as self-contained HTML and as Markdown."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence

from report.content import Block, Bullets, Para, Section, Table

PLOTS_DIR = "plots"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 max-width:1100px;margin:2em auto;padding:0 1.2em;line-height:1.5;background:#fff}
h1{font-size:1.7em;border-bottom:3px solid #2a6f97;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:2em;color:#2a6f97;border-bottom:1px solid #ddd}
#statement{background:#f1f7fb;border-left:5px solid #2a6f97;padding:.4em 1.2em;margin:1em 0}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef2f5}tr.warn td{background:#fde8e8}
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-style:italic;color:#444;font-size:.92em}
figure.table figcaption{margin-bottom:.4em}figure.table table{margin:0}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.92em}
"""


def _inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _block_html(block: Block) -> str:
    if isinstance(block, Para):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{_inline_html(i)}</li>" for i in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
        body = "".join(
            ('<tr class="warn">' if i in block.warn else "<tr>")
            + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row)
            + "</tr>"
            for i, row in enumerate(block.rows)
        )
        return (
            f'<figure class="table"><figcaption>{_inline_html(block.caption)}</figcaption>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></figure>"
        )
    data = base64.b64encode(block.png).decode("ascii")
    return (
        f'<figure id="plot-{block.name}"><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(block.alt)}"><figcaption>{_inline_html(block.caption)}'
        f"</figcaption></figure>"
    )


def render_html(title: str, parts: Sequence[Section]) -> str:
    """Return the self-contained HTML report: inline CSS, plots as ``data:`` URIs, no scripts."""
    body = "\n".join(
        f'<section id="{s.anchor}">\n<h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_block_html(b) for b in s.blocks)
        + "\n</section>"
        for s in parts
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _block_markdown(block: Block) -> str:
    if isinstance(block, Para):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {i}" for i in block.items)
    if isinstance(block, Table):
        lines = [
            f"*{block.caption}*",
            "",
            "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
            "|" + "---|" * len(block.header),
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"![{block.alt}]({PLOTS_DIR}/{block.name}.png)\n\n*{block.caption}*"


def render_markdown(title: str, parts: Sequence[Section]) -> str:
    """Return the Markdown report; plots are linked from ``plots/``."""
    out = [f"# {title}"]
    for s in parts:
        out.append(f"## {s.title}")
        out += [_block_markdown(b) for b in s.blocks]
    return "\n\n".join(out) + "\n"

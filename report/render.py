"""Render the report's sections as self-contained HTML and as Markdown.

Both renderers treat every character outside the content model's markup (``**bold**``,
```code```, backslash escapes: ``report.content``) as text: HTML escapes it; Markdown
backslash-escapes its punctuation, writes ``<``, ``>`` and ``&`` as entities, keeps table
pipes escaped and puts control characters (newlines included) out as spaces, so nothing quoted
from a run's files becomes a tag, a link, a heading or a broken table row.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Sequence

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


# The content model's inline markup (``report.content``): ``**bold**``, ```code``` and a
# backslash that makes the next character literal (``literal`` adds it to quoted text). A span
# never holds its own unescaped delimiter, so matching stays linear in hostile text.
_MARKUP = re.compile(r"\*\*((?:\\.|[^\\*])+)\*\*|`((?:\\.|[^\\`])+)`|\\(.)", re.DOTALL)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
# C0/C1 controls (newlines, tabs, terminal escapes) would break a line or a terminal: a space.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Markdown punctuation that could start markup in running text; <, > and & become entities, so
# no HTML from a run's files reaches a Markdown renderer.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _inline(
    text: str,
    plain: Callable[[str], str],
    bold: Callable[[str], str],
    code: Callable[[str], str],
) -> str:
    """Render ``text``'s inline markup: ``plain`` for text, ``bold``, ``code`` for spans."""
    out: list[str] = []
    pos = 0
    for m in _MARKUP.finditer(text):
        out.append(plain(text[pos : m.start()]))
        if m.group(1) is not None:
            out.append(bold(_inline(m.group(1), plain, bold, code)))
        elif m.group(2) is not None:
            out.append(code(_ESCAPED.sub(r"\1", m.group(2))))
        else:
            out.append(plain(m.group(3)))
        pos = m.end()
    out.append(plain(text[pos:]))
    return "".join(out)


def _html_text(text: str) -> str:
    return html.escape(_CONTROLS.sub(" ", text))


def _inline_html(text: str) -> str:
    return _inline(
        text,
        _html_text,
        lambda b: f"<strong>{b}</strong>",
        lambda c: f"<code>{_html_text(c)}</code>",
    )


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
        f'<section id="{html.escape(s.anchor)}">\n<h2>{_html_text(s.title)}</h2>\n'
        + "\n".join(_block_html(b) for b in s.blocks)
        + "\n</section>"
        for s in parts
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_html_text(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_html_text(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _md_text(text: str) -> str:
    """Plain text for Markdown: on one line, every markup character escaped, no HTML."""
    text = _MD_SPECIAL.sub(r"\\\1", _CONTROLS.sub(" ", text))
    return "".join(_MD_ENTITIES.get(c, c) for c in text)


def _md_code(text: str, *, cell: bool = False) -> str:
    """Return a code span holding ``text`` literally, fenced by more backticks than it holds."""
    text = _CONTROLS.sub(" ", text)
    if cell:
        text = text.replace("|", "\\|")  # GFM splits table rows at any unescaped pipe
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _inline_md(text: str, *, cell: bool = False) -> str:
    return _inline(text, _md_text, lambda b: f"**{b}**", lambda c: _md_code(c, cell=cell))


def _block_markdown(block: Block) -> str:
    if isinstance(block, Para):
        return _inline_md(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_inline_md(i)}" for i in block.items)
    if isinstance(block, Table):
        lines = [
            f"*{_inline_md(block.caption)}*",
            "",
            "| " + " | ".join(_inline_md(h, cell=True) for h in block.header) + " |",
            "|" + "---|" * len(block.header),
        ]
        lines += [
            "| " + " | ".join(_inline_md(c, cell=True) for c in row) + " |" for row in block.rows
        ]
        return "\n".join(lines)
    return (
        f"![{_md_text(block.alt)}]({PLOTS_DIR}/{block.name}.png)\n\n*{_inline_md(block.caption)}*"
    )


def render_markdown(title: str, parts: Sequence[Section]) -> str:
    """Return the Markdown report; plots are linked from ``plots/``."""
    out = [f"# {_md_text(title)}"]
    for s in parts:
        out.append(f"## {_md_text(s.title)}")
        out += [_block_markdown(b) for b in s.blocks]
    return "\n\n".join(out) + "\n"

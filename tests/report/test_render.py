"""HTML is self-contained; Markdown carries the statement, tables and plot links."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from report.content import Bullets, Para, Section, Table, literal
from report.render import render_html, render_markdown
from report.write import write_report
from tests.report.run_docs import RunDocs, Written

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def test_html_is_self_contained_and_embeds_the_plots(written: Written) -> None:
    html = written.html
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    on_disk = {p.read_bytes() for p in written.files.plots}
    assert {base64.b64decode(b) for b in embedded} == on_disk
    assert html.count('<figure id="plot-') == len(written.files.plots)


def test_markdown_has_the_statement_tables_and_plot_links(written: Written) -> None:
    md = written.files.markdown.read_text(encoding="utf-8")
    largest = max(c["epsilon"] for c in written.docs.privacy["clients"].values())
    assert md.startswith("# fedveil run run: privacy and training report\n")
    assert f"**(ε = {largest:.3f}, δ = 1e-05)-differentially private**" in md
    for p in written.files.plots:
        assert f"](plots/{p.name})" in md
    assert "| 2 | 202 | open-failed | tampered |" in md


# ------------------------------------------------------------ quoting hostile text

HOSTILE = (
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "a | b || c",
    "line one\nline two\r\n# heading\n- item",
    "[click](javascript:alert(1)) ![x](http://evil.example/x.png)",
    "**bold** and `code` and \\`half",
    "tab\there \x1b[31mred\x1b[0m &amp; &lt;b&gt;",
    "`",
    "***",
    "\\",
)


def _shown(text: str) -> str:
    """What a reader must see: the text with control characters as spaces."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text)


def _doc(text: str) -> tuple[Section, ...]:
    return (
        Section(
            text,
            "s",
            (
                Para(f"**reason:** {literal(text)}"),
                Bullets((literal(text),)),
                Table(literal(text), ("node", "detail"), ((literal(text), f"`{literal(text)}`"),)),
            ),
        ),
    )


def _markdown_tokens(md: str) -> list[Any]:
    markdown_it = pytest.importorskip("markdown_it")
    tokens: list[Any] = markdown_it.MarkdownIt("commonmark").enable("table").parse(md)
    return tokens


def _flatten(tokens: list[Any]) -> list[Any]:
    return [t for tok in tokens for t in (tok, *(_flatten(tok.children or [])))]


def _plain(inline: Any) -> str:
    return "".join(c.content for c in inline.children if c.type in ("text", "code_inline"))


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_shows_quoted_text_as_written_and_nothing_else(text: str) -> None:
    md = render_markdown(f"run {text}", _doc(text))
    tokens = _markdown_tokens(md)
    kinds = {t.type for t in _flatten(tokens)}

    assert not kinds & {"html_inline", "html_block", "link_open", "image", "hr", "code_block"}
    inlines = [t for t in tokens if t.type == "inline"]
    # title, section title, paragraph, bullet, caption, two header cells, two body cells
    assert [_plain(t) for t in inlines] == [
        f"run {_shown(text)}",
        _shown(text),
        f"reason: {_shown(text)}",
        _shown(text),
        _shown(text),
        "node",
        "detail",
        _shown(text),
        _shown(text).strip() if text.strip("`") == "" else _shown(text),
    ]
    assert [t.tag for t in tokens if t.type.startswith("heading_open")] == ["h1", "h2"]


@pytest.mark.parametrize("text", HOSTILE)
def test_unquoted_text_never_becomes_html_or_a_link_in_markdown(text: str) -> None:
    md = render_markdown("t", (Section("s", "s", (Para(text), Table("c", ("a",), ((text,),)))),))
    kinds = {t.type for t in _flatten(_markdown_tokens(md))}

    assert not kinds & {"html_inline", "html_block", "link_open", "image"}
    assert md.count("\n| ") == 2  # the header and the one row: no line break leaked into them


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.parametrize("text", HOSTILE)
def test_html_shows_quoted_text_as_written(text: str) -> None:
    parser = _Tags()
    parser.feed(render_html(f"run {text}", _doc(text)))

    assert parser.tags <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "section", "p", "strong",
        "ul", "li", "figure", "figcaption", "table", "thead", "tbody", "tr", "th", "td", "code",
    }  # fmt: skip
    assert parser.cells == [_shown(text), _shown(text)]


def test_a_rejection_quoted_from_metrics_is_escaped_in_both_reports(
    docs: RunDocs, tmp_path: Path
) -> None:
    detail = "<img src=x onerror=alert(1)> | [x](javascript:alert(1))\nnext"
    docs.metrics[1]["rejected"][0]["detail"] = detail
    files = write_report(docs.write(tmp_path / "run"))

    md = files.markdown.read_text(encoding="utf-8")
    kinds = {t.type for t in _flatten(_markdown_tokens(md))}
    assert not kinds & {"html_inline", "html_block", "link_open"}
    html = files.html.read_text(encoding="utf-8")
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html

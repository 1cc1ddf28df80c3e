"""HTML is self-contained; Markdown carries the statement, tables and plot links."""

from __future__ import annotations

import base64
import re

import pytest

from tests.report.run_docs import Written

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

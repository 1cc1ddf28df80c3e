"""Write the privacy-budget and training report of a run: ``report.html``, ``report.md``, plots.

``write_report(run_dir)`` reads and checks the run's files and recomputes every ε
(``report.analysis``) and builds every section and figure (``report.document``) before it writes
anything; then it writes ``plots/*.png``, ``report.md`` and ``report.html`` (self-contained:
inline CSS, plots as ``data:`` URIs), each atomically. Anything wrong raises ``ReportError``
with one line naming the file and the problem, and nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.files import write_atomic
from report.analysis import ReportError, analyse
from report.document import sections
from report.render import PLOTS_DIR, render_html, render_markdown
from report.training import figures

__all__ = ["ReportError", "ReportFiles", "write_report"]

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote."""

    html: Path
    markdown: Path
    plots: tuple[Path, ...]


def write_report(run_dir: Path) -> ReportFiles:
    """Check ``run_dir`` and write ``report.html``, ``report.md`` and ``plots/*.png`` into it.

    Every file is read and checked and every number computed before the first write, so a
    ``ReportError`` leaves the directory untouched; each file is then replaced atomically.
    """
    run_dir = Path(run_dir)
    analysis = analyse(run_dir)
    figs = figures(analysis)
    parts = sections(analysis, figs)
    title = f"fedveil run {run_dir.resolve().name}: privacy and training report"
    html_text = render_html(title, parts)
    md_text = render_markdown(title, parts)
    written = []
    for fig in figs.values():
        path = run_dir / PLOTS_DIR / f"{fig.name}.png"
        write_atomic(path, fig.png)
        written.append(path)
    files = ReportFiles(
        html=run_dir / HTML_NAME, markdown=run_dir / MARKDOWN_NAME, plots=tuple(written)
    )
    write_atomic(files.markdown, md_text.encode("utf-8"))
    write_atomic(files.html, html_text.encode("utf-8"))
    log.info("report written to %s", files.html)
    return files

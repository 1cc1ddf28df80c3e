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

from common.files import show_path, write_atomic
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
    files = ReportFiles(
        html=run_dir / HTML_NAME,
        markdown=run_dir / MARKDOWN_NAME,
        plots=tuple(run_dir / PLOTS_DIR / f"{fig.name}.png" for fig in figs.values()),
    )
    outputs = [
        *zip(files.plots, (fig.png for fig in figs.values()), strict=True),
        (files.markdown, md_text.encode("utf-8")),
        (files.html, html_text.encode("utf-8")),
    ]
    _check_targets(run_dir / PLOTS_DIR, [path for path, _ in outputs])
    for path, data in outputs:
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise ReportError(f"{show_path(path)}: cannot write ({exc.strerror or exc})") from None
    log.info("report written to %s", files.html)
    return files


def _check_targets(plots_dir: Path, paths: list[Path]) -> None:
    """Refuse, before anything is written, a report file's place taken by something else."""
    if plots_dir.exists() and not plots_dir.is_dir():
        raise ReportError(f"{show_path(plots_dir)} is not a folder; move it away and run again")
    for path in paths:
        if path.exists() and not path.is_file():
            raise ReportError(
                f"{show_path(path)} is not a regular file (a folder?); move it away and run "
                f"`fedveil report` again"
            )

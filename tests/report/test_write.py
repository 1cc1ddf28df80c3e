"""The report's files: what is written, and writing twice gives the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from report.write import ReportError, ReportFiles, write_report
from tests.report.run_docs import Written

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


# ----------------------------------------------------------------------- what is written


def test_writes_html_markdown_and_plots(written: Written) -> None:
    files = written.files
    assert files.html == written.run / "report.html"
    assert files.markdown == written.run / "report.md"
    assert {p.name for p in files.plots} == {
        "epsilon.png",
        "accuracy.png",
        "bytes.png",
        "clients.png",
    }
    for path in (files.html, files.markdown, *files.plots):
        assert path.is_file() and path.stat().st_size > 0
    assert sorted(p.name for p in written.run.iterdir() if p.name.startswith(".")) == []


def test_rewriting_gives_identical_files(written: Written, tmp_path: Path) -> None:
    again = write_report(written.docs.write(tmp_path / "run"))
    assert again.html.read_text(encoding="utf-8") == written.html
    assert [p.read_bytes() for p in again.plots] == [p.read_bytes() for p in written.files.plots]


def test_the_package_exports_the_entry_point() -> None:
    import report
    import report.write

    assert report.write_report is report.write.write_report
    assert report.ReportError is ReportError and report.ReportFiles is ReportFiles

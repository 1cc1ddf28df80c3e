"""The report's files: what is written, and writing twice gives the same bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from report.write import ReportError, ReportFiles, write_report
from tests.report.run_docs import RunDocs, Written

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


# ----------------------------------------------------------------------- what is refused


@pytest.mark.parametrize("taken", ["report.html", "report.md", "plots/epsilon.png"])
def test_a_report_file_whose_place_is_a_folder_is_refused_before_any_write(
    docs: RunDocs, tmp_path: Path, taken: str
) -> None:
    run = docs.write(tmp_path / "run")
    (run / taken).mkdir(parents=True)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))

    with pytest.raises(ReportError, match=f"{re.escape(taken)} is not a regular file") as info:
        write_report(run)

    assert "\n" not in str(info.value)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_plots_file_in_place_of_the_folder_is_refused(docs: RunDocs, tmp_path: Path) -> None:
    run = docs.write(tmp_path / "run")
    (run / "plots").write_text("not a folder")

    with pytest.raises(ReportError, match="plots is not a folder"):
        write_report(run)

    assert not (run / "report.md").exists()


def test_a_failed_write_is_one_line_naming_the_file(
    docs: RunDocs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = docs.write(tmp_path / "run")

    def full_disk(path: Path, data: bytes, **_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("report.write.write_atomic", full_disk)
    with pytest.raises(
        ReportError, match=r"epsilon\.png: cannot write \(No space left on device\)"
    ):
        write_report(run)

"""The terminal tables print ids from a run's files as written, never as rich markup."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from report.console import privacy_table, summary_table
from tests.report.run_docs import build_docs

HOSTILE = "[bold red]0[/bold red][link=https://evil.example]x[/link]"


def _text(table: Table) -> str:
    console = Console(record=True, width=400, color_system=None)
    console.print(table)
    return console.export_text()


def test_a_client_id_with_markup_prints_as_written() -> None:
    doc = build_docs().privacy
    doc["clients"] = {HOSTILE: doc["clients"]["0"]}

    assert HOSTILE in _text(privacy_table(doc))


def test_a_run_name_with_markup_prints_as_written(tmp_path: Path) -> None:
    name = "[bold red]run[link=https:evil.example]x"  # a folder name: no slash

    assert f"fedveil run {name}" in _text(summary_table([], tmp_path / name))

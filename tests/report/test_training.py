"""The report's training table and bytes caption: bytes up and down; old runs without them."""

from __future__ import annotations

from pathlib import Path

from report.analysis import analyse
from report.training import figures, training_table
from tests.report.run_docs import RunDocs


def test_bytes_sent_are_a_column_and_in_the_bytes_caption(docs: RunDocs, tmp_path: Path) -> None:
    for i, row in enumerate(docs.metrics):
        row["bytes_down"] = 7000 + i
    a = analyse(docs.write(tmp_path / "run"))

    table = training_table(a)

    column = table.header.index("bytes down")
    assert [row[column] for row in table.rows] == [
        f"{7000 + i:,}" for i in range(len(docs.metrics))
    ]
    total = sum(7000 + i for i in range(len(docs.metrics)))
    assert f"{total:,} bytes of signed model changes" in figures(a)["bytes"].caption


def test_a_run_recorded_before_the_downlink_was_counted_reads_as_zero(
    docs: RunDocs, tmp_path: Path
) -> None:
    assert all("bytes_down" not in row for row in docs.metrics)
    a = analyse(docs.write(tmp_path / "run"))

    table = training_table(a)

    column = table.header.index("bytes down")
    assert {row[column] for row in table.rows} == {"0"}
    assert "signed model changes" not in figures(a)["bytes"].caption

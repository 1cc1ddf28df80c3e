"""``deployment.logs``: reading files that are still being written."""

from __future__ import annotations

import json
from pathlib import Path

from deployment.logs import json_file, last_line, metric_rows, read_from, size


def test_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert size(tmp_path / "nope") == 0
    assert read_from(tmp_path / "nope", 0) == ""
    assert metric_rows(tmp_path) == []
    assert json_file(tmp_path / "nope.json") is None
    assert last_line(tmp_path / "nope") == "(empty log)"


def test_read_from_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("first\nsecond\n")

    assert read_from(path, len("first\n")) == "second\n"
    assert size(path) == len("first\nsecond\n")


def test_a_torn_last_metrics_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1}) + '\n{"round": ')

    assert metric_rows(tmp_path) == [{"round": 1}]


def test_a_partial_or_non_object_json_file_is_none(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"unit": ')
    (tmp_path / "b.json").write_text("[1]")

    assert json_file(tmp_path / "a.json") is None
    assert json_file(tmp_path / "b.json") is None


def test_last_line_names_the_exit_reason_without_colour(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    path.write_text(
        "INFO : starting\n\x1b[31mERROR\x1b[0m : Failed to activate SuperNode\n"
        "Exit Code: 305\nThe node is not authorized.\nINFO : bye\n"
    )

    line = last_line(path)

    assert line.startswith("Exit Code: 305") and "not authorized" in line
    assert "\x1b" not in line and "INFO" not in line

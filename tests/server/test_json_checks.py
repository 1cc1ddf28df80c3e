"""Tests of ``server.json_checks.read_json``: every unreadable run file is one ``RunFileError``."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.json_checks import RunFileError, read_json


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b"{not json", "not readable JSON"),
        (b"\xff\xfe", "not readable JSON"),
    ],
)
def test_unreadable_json_is_one_run_file_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "privacy.json"
    path.write_bytes(content)
    with pytest.raises(RunFileError, match=problem) as info:
        read_json(path)
    assert "\n" not in str(info.value) and "privacy.json" in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match="missing"):
        read_json(tmp_path / "metrics.jsonl")

"""Tests of ``server.watermark_key``: the key file, its mode, and what is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from server.watermark_key import KEY_BYTES, WatermarkError, generate_key, read_key, write_key
from server.watermark_trigger import TriggerSet
from tests.server.watermark_support import KEY, OTHER_KEY


def test_key_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "watermark.key"

    write_key(path, key)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key(path) == key
    assert len(key) == KEY_BYTES and generate_key() != key
    assert [p.name for p in tmp_path.iterdir()] == ["watermark.key"]  # no temporary left


def test_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key(tmp_path / "k", KEY)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "watermark.key"
    write_key(path, KEY)

    with pytest.raises(WatermarkError, match="exists already"):
        write_key(path, OTHER_KEY)

    assert read_key(path) == KEY
    assert [p.name for p in tmp_path.iterdir()] == ["watermark.key"]


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "watermark.key"
    write_key(path, KEY)
    path.chmod(0o644)
    with pytest.raises(WatermarkError, match="chmod 600"):
        read_key(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"fedveil-watermark-key-v1 00\n",
        b"-----BEGIN PRIVATE KEY-----\nMC4C\n",
        KEY,
        b"\xff" * 90,
    ],
)
def test_a_file_that_is_no_key_is_refused_in_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "watermark.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(WatermarkError) as info:
        read_key(path)
    assert "\n" not in str(info.value) and "not a fedveil watermark key" in str(info.value)


@pytest.mark.parametrize("key", [b"", b"x" * 31, b"x" * 33, "k" * 32])
def test_keys_are_32_bytes(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(WatermarkError):
        write_key(tmp_path / "k", key)
    with pytest.raises(WatermarkError):
        TriggerSet.from_key(key, (1, 8, 8), 10)

"""Atomic and secret file writes: all or nothing, exact modes, never replacing a key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.files import SECRET_MODE, write_atomic, write_new


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _boom(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


# ----------------------------------------------------------------------------- write_atomic


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "state.json"

    write_atomic(path, b"first")
    write_atomic(path, b"second")

    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["state.json"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_write_atomic_sets_the_exact_mode(
    tmp_path: Path, mode: int, permissive_umask: None
) -> None:
    path = tmp_path / "file"

    write_atomic(path, b"data", mode=mode)

    assert _mode(path) == mode


def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[os.stat_result]:
    """Record the ``fstat`` of every descriptor ``os.fsync`` flushes from now on."""
    seen: list[os.stat_result] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.fstat(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_write_atomic_secret_is_never_readable_by_others_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissive_umask: None
) -> None:
    seen = fsynced(monkeypatch)

    write_atomic(tmp_path / "watermark.key", b"secret", mode=SECRET_MODE)

    modes = [stat.S_IMODE(st.st_mode) for st in seen if stat.S_ISREG(st.st_mode)]
    assert modes and all(m == SECRET_MODE for m in modes)


@pytest.mark.parametrize("failing", ["replace", "fsync", "chmod"])
def test_write_atomic_failure_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(b"old content")

    monkeypatch.setattr(os, failing, _boom)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new content that never lands")
    monkeypatch.undo()

    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["checkpoint.bin"]


def test_write_atomic_interrupted_new_file_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "model.safetensors", b"weights")
    monkeypatch.undo()

    assert os.listdir(tmp_path) == []


def test_write_atomic_refuses_non_bytes_and_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "x.bin", "text, not bytes")  # type: ignore[arg-type]

    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("durable", "synced"), [(True, True), (False, False)])
def test_write_atomic_fsyncs_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, synced: bool
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)

    write_atomic(tmp_path / "state.json", b"{}", durable=durable)

    assert bool(calls) is synced
    assert (tmp_path / "state.json").read_bytes() == b"{}"


# ----------------------------------------------------------------------------- write_new


def test_write_new_creates_with_content_and_mode(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "keys" / "aggregator.key"

    write_new(path, b"key material", mode=SECRET_MODE)

    assert path.read_bytes() == b"key material"
    assert _mode(path) == SECRET_MODE
    assert os.listdir(path.parent) == ["aggregator.key"]


def test_write_new_mode_holds_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissive_umask: None
) -> None:
    modes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    write_new(tmp_path / "node.key", b"x" * 100_000, mode=SECRET_MODE)

    assert modes and all(m == SECRET_MODE for m in modes)


def test_write_new_mode_ignores_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_new(tmp_path / "ca.pem", b"certificate", mode=0o644)
    finally:
        os.umask(old)

    assert _mode(tmp_path / "ca.pem") == 0o644


def test_write_new_never_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.key"
    path.write_bytes(b"the real key")

    with pytest.raises(FileExistsError):
        write_new(path, b"an impostor", mode=SECRET_MODE)

    assert path.read_bytes() == b"the real key"
    assert os.listdir(tmp_path) == ["aggregator.key"]


def test_write_new_never_writes_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    (tmp_path / "node.key").symlink_to(target)

    with pytest.raises(FileExistsError):
        write_new(tmp_path / "node.key", b"secret", mode=SECRET_MODE)

    assert target.read_bytes() == b"untouched"


@pytest.mark.parametrize("failing", ["write", "fsync", "link"])
def test_write_new_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    monkeypatch.setattr(os, failing, _boom)
    with pytest.raises(OSError, match="No space left"):
        write_new(tmp_path / "server.key", b"secret", mode=SECRET_MODE)
    monkeypatch.undo()

    assert os.listdir(tmp_path) == []


def test_write_new_is_always_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)

    write_new(tmp_path / "server.key", b"secret", mode=SECRET_MODE)

    assert len(calls) >= 1


@pytest.mark.parametrize("durable", [True, False])
def test_write_atomic_flushes_the_folder_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    seen = fsynced(monkeypatch)

    write_atomic(tmp_path / "privacy.json", b"{}", durable=durable)

    assert any(stat.S_ISDIR(st.st_mode) for st in seen) is durable

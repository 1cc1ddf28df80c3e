from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pytest

from client.privacy_state import ClientPrivacyState, PrivacyStateError
from client.state_store import PRIVACY_FILE, RESIDUAL_FILE, StateStore


def test_residual_round_trips_exactly(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    residual = np.linspace(-1, 1, 17, dtype=np.float32)

    store.save_residual(residual)

    loaded = store.load_residual(17)
    assert loaded is not None
    assert np.array_equal(loaded, residual)


@pytest.mark.parametrize("content", [b"", b"not safetensors", b"\x08" + b"\x00" * 7 + b"{}"])
def test_unreadable_residual_is_dropped_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A residual is cheap to lose (it is written without fsync); the node trains on without it.
    (tmp_path / RESIDUAL_FILE).write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="client.state_store"):
        assert StateStore(tmp_path).load_residual(17) is None
    assert "dropping the error-feedback residual" in caplog.text


def test_residual_of_another_size_is_dropped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_residual(np.zeros(5, dtype=np.float32))

    assert store.load_residual(6) is None


@pytest.mark.parametrize("content", ["{broken", "[" * 200_000 + "]" * 200_000])
def test_corrupt_privacy_state_still_refuses(tmp_path: Path, content: str) -> None:
    # Unlike the residual, the privacy state is never dropped: forgetting it would reset ε.
    (tmp_path / PRIVACY_FILE).write_text(content, encoding="utf-8")

    with pytest.raises(PrivacyStateError, match="refusing to take part"):
        StateStore(tmp_path).load_privacy("run-1")


def test_privacy_state_survives_a_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = ClientPrivacyState(run_tag="run-1", noise_multiplier=1.5)
    state.record(1, (1.5, 0.25, 8))

    store.save_privacy(state)

    loaded = store.load_privacy("run-1")
    assert loaded is not None
    assert loaded.history == state.history
    assert loaded.rounds == [1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_0600_and_created_folders_0700(
    tmp_path: Path, permissive_umask: None
) -> None:
    (tmp_path / "run").mkdir(mode=0o755)
    store = StateStore(tmp_path / "run" / "client-state" / "partition-3")
    state = ClientPrivacyState(run_tag="run-1", noise_multiplier=1.5)
    state.record(1, (1.5, 0.25, 8))

    store.save_privacy(state)
    store.save_residual(np.ones(4, dtype=np.float32))
    store.save_privacy(state)  # a replacement keeps the mode too

    assert _mode(store.folder / PRIVACY_FILE) == 0o600
    assert _mode(store.folder / RESIDUAL_FILE) == 0o600
    assert _mode(store.folder) == _mode(store.folder.parent) == 0o700
    assert _mode(tmp_path / "run") == 0o755  # a folder it did not create keeps its mode


def test_the_residual_alone_also_makes_a_private_folder(
    tmp_path: Path, permissive_umask: None
) -> None:
    store = StateStore(tmp_path / "node")

    store.save_residual(np.ones(4, dtype=np.float32))

    assert _mode(store.folder) == 0o700 and _mode(store.folder / RESIDUAL_FILE) == 0o600

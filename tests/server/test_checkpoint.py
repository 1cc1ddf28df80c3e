"""Checkpoints carry the ledger and the anomaly evidence through a resume; bad ones are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.anomaly import AnomalyScore, DirectionEvidence
from server.checkpoint import (
    STATE_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from server.ledger import PrivacyLedger

SHAPES = {"w": (3, 2)}


def _ledger() -> dict[str, Any]:
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=4.0)
    ledger.charge("0", 4, (1.1, 0.25, 4), 0.5)
    return ledger.to_json()


def _checkpoint(evidence: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        run_tag="run-1",
        round=4,
        arrays={"w": np.arange(6, dtype=np.float32).reshape(3, 2)},
        node_clients={11: "0", 12: "1"},
        trained_before={11, 12},
        ledger=_ledger(),
        evidence=evidence,
    )


def test_direction_evidence_survives_a_checkpoint(tmp_path: Path) -> None:
    evidence = DirectionEvidence()
    for z in (-7.0, -5.0, 0.5):
        evidence.add(
            {11: AnomalyScore(1.0, 0.0, 0.0, z, True), 12: AnomalyScore(1.0, 0.0, 0.0, 0.1, True)}
        )

    save_checkpoint(tmp_path, _checkpoint(evidence.to_json()))
    restored = DirectionEvidence.from_json(load_checkpoint(tmp_path, SHAPES).evidence)

    assert restored.combined(11) == pytest.approx(evidence.combined(11))
    assert restored.flagged([11, 12]) == evidence.flagged([11, 12]) == [11]


def test_a_checkpoint_written_before_the_evidence_resumes_with_none(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint({}))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    del state["evidence"]
    (tmp_path / STATE_FILE).write_text(json.dumps(state))

    loaded = load_checkpoint(tmp_path, SHAPES)

    assert loaded.evidence == {} and loaded.round == 4


def test_the_ledger_survives_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint({}))

    ledger = PrivacyLedger.from_json(load_checkpoint(tmp_path, SHAPES).ledger)

    assert ledger.to_json() == _ledger()


def test_a_garbled_ledger_is_refused_naming_the_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint({}))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    state["ledger"]["clients"]["0"]["history"] = [[1.1, 0.25]]
    (tmp_path / STATE_FILE).write_text(json.dumps(state))

    with pytest.raises(CheckpointError, match="client 0 history") as info:
        load_checkpoint(tmp_path, SHAPES)

    assert str(info.value).startswith(f"{tmp_path / STATE_FILE} ledger: ")


def _tamper(folder: Path, **fields: Any) -> None:
    state = json.loads((folder / STATE_FILE).read_text())
    state.update(fields)
    (folder / STATE_FILE).write_text(json.dumps(state))


@pytest.mark.parametrize(
    "model", ["/etc/passwd", "../global-4.safetensors", "sub/global-4.safetensors", 7]
)
def test_a_model_path_outside_the_checkpoint_is_refused(tmp_path: Path, model: object) -> None:
    folder = tmp_path / "run" / "checkpoint"
    save_checkpoint(folder, _checkpoint({}))
    # The file the tampered name points at exists, so only confinement can refuse it.
    (folder / "sub").mkdir()
    for target in (
        tmp_path / "run" / "global-4.safetensors",
        folder / "sub" / "global-4.safetensors",
    ):
        target.write_bytes((folder / "global-4.safetensors").read_bytes())
    _tamper(folder, model=model)

    with pytest.raises(CheckpointError, match="model must be a file name") as info:
        load_checkpoint(folder, SHAPES)

    assert "\n" not in str(info.value)


def test_a_model_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, _checkpoint({}))
    outside = tmp_path / "outside.safetensors"
    (folder / "global-4.safetensors").rename(outside)
    (folder / "global-4.safetensors").symlink_to(outside)

    with pytest.raises(CheckpointError, match="leads outside"):
        load_checkpoint(folder, SHAPES)


def test_a_symlinked_state_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, _checkpoint({}))
    outside = tmp_path / "state.json"
    (folder / STATE_FILE).rename(outside)
    (folder / STATE_FILE).symlink_to(outside)

    with pytest.raises(CheckpointError, match="symlink"):
        read_state(folder)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"ledger": {}}, "ledger lacks"),
        ({"ledger": None}, "ledger must be an object"),
        ({"round": "4"}, "round must be an integer"),
        ({"round": True}, "round must be an integer"),
        ({"run_tag": ["x"]}, "run_tag must be a string"),
        ({"node_clients": {"eleven": "0"}}, "bad node id"),
        ({"node_clients": {"11": 0}}, "node_clients"),
        ({"trained_before": "11"}, "trained_before must be a list"),
        ({"evidence": [1]}, "evidence must be an object"),
    ],
)
def test_a_garbled_state_is_one_line_naming_the_file(
    tmp_path: Path, fields: dict[str, Any], match: str
) -> None:
    save_checkpoint(tmp_path, _checkpoint({}))
    _tamper(tmp_path, **fields)

    with pytest.raises(CheckpointError, match=match) as info:
        read_state(tmp_path)

    assert str(info.value).startswith(str(tmp_path / STATE_FILE)) and "\n" not in str(info.value)


def test_a_deeply_nested_state_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("[" * 200_000 + "]" * 200_000)

    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_state(tmp_path)


def test_read_state_checks_without_loading_the_model(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint({}))

    state = read_state(tmp_path)

    assert state.model == tmp_path / "global-4.safetensors" and state.round == 4

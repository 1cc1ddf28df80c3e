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

"""Checkpoints carry the anomaly evidence through a resume; older ones load without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.anomaly import AnomalyScore, DirectionEvidence
from server.checkpoint import STATE_FILE, Checkpoint, load_checkpoint, save_checkpoint

SHAPES = {"w": (3, 2)}


def _checkpoint(evidence: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        run_tag="run-1",
        round=4,
        arrays={"w": np.arange(6, dtype=np.float32).reshape(3, 2)},
        node_clients={11: "0", 12: "1"},
        trained_before={11, 12},
        ledger={"unit": "example"},
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

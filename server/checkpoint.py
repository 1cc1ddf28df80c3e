"""Checkpoints: everything ``fedveil resume`` needs, written atomically after every round.

Layout of ``RUN_DIR/checkpoint/``::

    global-<round>.safetensors   the global model after <round>
    state.json                   {"version", "run_tag", "round", "model", "node_clients",
                                  "trained_before", "ledger", "evidence"}

``ledger`` is the ``privacy.json`` document, checked on load like the file itself; ``evidence``
the anomaly scorer's per-node direction evidence (``DirectionEvidence.to_json``), empty when a
checkpoint written before it existed resumes.
``state.json`` is replaced atomically and names the model file it belongs to, so a crash at any
moment leaves a consistent pair; older model files are removed only after the switch.
Sampling and fault plans derive from ``(seed, round)``, so no RNG state needs saving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.files import write_atomic
from common.weights import WeightsError, load_safetensors, save_safetensors
from server.json_checks import RunFileError
from server.ledger_file import PrivacyFile

CHECKPOINT_VERSION = 1
STATE_FILE = "state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or from another version; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """The state of a run after ``round`` completed rounds."""

    run_tag: str
    round: int
    arrays: dict[str, npt.NDArray[np.float32]]
    node_clients: dict[int, str]
    trained_before: set[int]
    ledger: dict[str, Any]
    evidence: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    """Write a checkpoint atomically and drop the model files of older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    model_name = f"global-{checkpoint.round}.safetensors"
    save_safetensors(folder / model_name, checkpoint.arrays)
    state = {
        "version": CHECKPOINT_VERSION,
        "run_tag": checkpoint.run_tag,
        "round": checkpoint.round,
        "model": model_name,
        "node_clients": {str(k): v for k, v in checkpoint.node_clients.items()},
        "trained_before": sorted(checkpoint.trained_before),
        "ledger": checkpoint.ledger,
        "evidence": checkpoint.evidence,
    }
    write_atomic(folder / STATE_FILE, (json.dumps(state) + "\n").encode())
    for stale in folder.glob("global-*.safetensors"):
        if stale.name != model_name:
            stale.unlink(missing_ok=True)


def load_checkpoint(folder: Path, shapes: Mapping[str, tuple[int, ...]]) -> Checkpoint:
    """Read and validate the checkpoint in ``folder`` against the model's ``shapes``."""
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: this run has no checkpoint to resume") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); the checkpoint is corrupt") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a version-{CHECKPOINT_VERSION} fedveil checkpoint")
    try:
        PrivacyFile.from_json(state["ledger"], f"{path} ledger")
        model = folder / str(state["model"])
        arrays = load_safetensors(model, shapes)
        return Checkpoint(
            run_tag=str(state["run_tag"]),
            round=int(state["round"]),
            arrays=arrays,
            node_clients={int(k): str(v) for k, v in state["node_clients"].items()},
            trained_before={int(n) for n in state["trained_before"]},
            ledger=dict(state["ledger"]),
            evidence=dict(state.get("evidence", {})),
        )
    except WeightsError as exc:
        raise CheckpointError(f"checkpoint model does not fit: {exc}") from None
    except RunFileError as exc:
        raise CheckpointError(str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} lacks or garbles a field ({exc})") from None

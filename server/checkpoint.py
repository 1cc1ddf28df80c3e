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
On load every field is type-checked and the model must be a plain ``global-<round>.safetensors``
inside the folder (no symlink, no other path): a tampered checkpoint is refused, never followed.
Sampling and fault plans derive from ``(seed, round)``, so no RNG state needs saving.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.files import show_path, write_atomic
from common.weights import WeightsError, load_safetensors, save_safetensors
from server.json_checks import Fields, RunFileError
from server.ledger_file import PrivacyFile

CHECKPOINT_VERSION = 1
STATE_FILE = "state.json"
MODEL_NAME = re.compile(r"global-[0-9]{1,9}\.safetensors")


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


def _inside(folder: Path, name: object, path: Path) -> Path:
    """Return the model file ``name`` names, refusing anything but a plain file in ``folder``.

    ``state.json`` may have been edited by anyone who can write the run directory: its model
    name must be ``global-<round>.safetensors`` and the file no symlink, so a resume never
    reads (or later deletes) a file outside the checkpoint folder.
    """
    if not (isinstance(name, str) and MODEL_NAME.fullmatch(name)):
        raise CheckpointError(
            f"{show_path(path)}: model must be a file name global-<round>.safetensors inside "
            f"{show_path(folder)}, got {name!r:.80}; the checkpoint was altered"
        )
    model = folder / name
    if model.is_symlink() or model.resolve().parent != folder.resolve():
        raise CheckpointError(
            f"{show_path(model)} leads outside {show_path(folder)}; a checkpoint's files must "
            f"be plain files inside it (the checkpoint was altered)"
        )
    return model


@dataclass(frozen=True)
class CheckpointState:
    """``state.json`` checked: every field typed, the ledger valid, the model file confined."""

    run_tag: str
    round: int
    model: Path
    node_clients: dict[int, str]
    trained_before: set[int]
    ledger: dict[str, Any]
    evidence: dict[str, Any]


def read_state(folder: Path) -> CheckpointState:
    """Read and check ``folder/state.json`` without loading the model (the CLI's early check).

    Raises:
        CheckpointError: One line naming the file: missing, unreadable, another version, a
            field missing or of the wrong type, an invalid ledger, or a model path that is not
            a plain file inside ``folder`` (a symlink, an absolute path, ``..``).

    """
    path = folder / STATE_FILE
    if folder.is_symlink() or path.is_symlink():
        raise CheckpointError(
            f"{show_path(path)} is reached through a symlink; a checkpoint must be plain files "
            f"inside the run directory"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{show_path(path)} not found: this run has no checkpoint to resume"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise CheckpointError(
            f"{show_path(path)} is unreadable ({problem}); the checkpoint is corrupt"
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{show_path(path)} is not a version-{CHECKPOINT_VERSION} fedveil checkpoint"
        )
    fields = Fields(path)
    try:
        fields.need(
            state,
            ("run_tag", "round", "model", "node_clients", "trained_before", "ledger"),
            "state",
        )
        ledger = fields.obj(state["ledger"], "ledger")
        PrivacyFile.from_json(ledger, f"{path} ledger")
        node_clients = fields.obj(state["node_clients"], "node_clients")
        return CheckpointState(
            run_tag=fields.text(state["run_tag"], "run_tag"),
            round=fields.integer(state["round"], "round", minimum=1),
            model=_inside(folder, state["model"], path),
            node_clients={
                int(k): fields.text(v, f"node_clients[{k!r:.40}]") for k, v in node_clients.items()
            },
            trained_before=set(fields.integers(state["trained_before"], "trained_before")),
            ledger=dict(ledger),
            evidence=dict(fields.obj(state.get("evidence", {}), "evidence")),
        )
    except RunFileError as exc:
        raise CheckpointError(str(exc)) from None
    except ValueError as exc:  # a node id that is no integer
        raise CheckpointError(
            f"{show_path(path)}: node_clients has a bad node id ({exc})"
        ) from None


def load_checkpoint(folder: Path, shapes: Mapping[str, tuple[int, ...]]) -> Checkpoint:
    """Read and validate the checkpoint in ``folder`` against the model's ``shapes``.

    Raises:
        CheckpointError: As :func:`read_state`, or the model file is unreadable or does not
            fit ``shapes``.

    """
    state = read_state(folder)
    try:
        arrays = load_safetensors(state.model, shapes)
    except WeightsError as exc:
        raise CheckpointError(f"checkpoint model does not fit: {exc}") from None
    # The checked state with the model it names, field for field.
    fields = (state.node_clients, state.trained_before, state.ledger, state.evidence)
    return Checkpoint(state.run_tag, state.round, arrays, *fields)

"""The run directory (contract in architecture.md): config, metrics, ledger and final model."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.files import write_atomic
from common.weights import save_safetensors


class RunDirError(ValueError):
    """The run directory cannot be created or is not a fedveil run directory."""


@dataclass(frozen=True)
class Rejection:
    """A reply that did not reach aggregation, with a reason category."""

    node: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class RoundRecord:
    """One line of ``metrics.jsonl``."""

    round: int
    accuracy: float
    loss: float
    watermark_accuracy: float | None
    clients: list[int]
    rejected: list[Rejection]
    flagged: list[int]
    bytes_sealed: int
    bytes_dense: int
    seconds: float
    refused: list[int] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    epsilon_max: float = 0.0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RoundRecord:
        """Rebuild a round from its ``metrics.jsonl`` object."""
        fields = dict(doc)
        fields["rejected"] = [Rejection(**r) for r in doc.get("rejected", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in fields.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of this round."""
        doc = asdict(self)
        doc["rejected"] = [asdict(r) for r in self.rejected]
        return doc


def new_run_id() -> str:
    """Return a sortable, unique run id: UTC time and a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class RunDirectory:
    """Writes one run's files; every file is replaced atomically, ``metrics.jsonl`` appended."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    PRIVACY = "privacy.json"
    MODEL = "model.safetensors"
    RUN_FILES = (CONFIG, METRICS, PRIVACY, MODEL, "checkpoint")

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path) -> RunDirectory:
        """Create a run directory; refuse one that already holds a run.

        Other files may be there already: ``fedveil federation up`` writes ``deployment.json``
        (and, by default, ``deployment/``) before the ServerApp starts.
        """
        if path.exists() and any((path / name).exists() for name in cls.RUN_FILES):
            raise RunDirError(f"{path} already holds files; choose a new --out folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path} ({exc.strerror})") from None
        return cls(path)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json``: the fully resolved configuration."""
        write_atomic(self.path / self.CONFIG, (json.dumps(config, indent=2) + "\n").encode())

    def append_round(self, record: RoundRecord) -> None:
        """Append one round to ``metrics.jsonl`` and flush it to disk."""
        with (self.path / self.METRICS).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record.to_json()) + "\n")

    def truncate_rounds(self, last_round: int) -> None:
        """Drop ``metrics.jsonl`` lines after ``last_round`` (written after the last checkpoint)."""
        path = self.path / self.METRICS
        if not path.exists():
            return
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["round"] <= last_round
        ]
        write_atomic(path, "".join(f"{line}\n" for line in kept).encode())

    def write_model(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None:
        """Write the global model as ``model.safetensors`` (``state_dict`` names)."""
        save_safetensors(self.path / self.MODEL, arrays)

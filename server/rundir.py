"""The run directory (contract in architecture.md): its files' names, writer and typed readers.

``RunDirectory`` writes a run: ``config.json`` and ``model.safetensors`` are replaced atomically,
``metrics.jsonl`` gains one line per finished round (:class:`RoundRecord`). The readers here
(``read_config``, ``read_rounds``, ``read_model_shapes``; ``privacy.json`` in
``server.ledger_file``) are the only ones: the report, the CLI and the contract check use them.
A file that does not keep its contract raises ``RunFileError`` naming the file and the problem.
"""

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

from common import protocol
from common.config import FedveilConfig
from common.files import write_atomic
from common.weights import save_safetensors
from server.json_checks import Fields, RunFileError, read_json

__all__ = [
    "CONFIG",
    "METRICS",
    "MODEL",
    "PRIVACY",
    "ROUND_KEYS",
    "Rejection",
    "RoundRecord",
    "RunDirError",
    "RunDirectory",
    "RunFileError",
    "new_run_id",
    "read_config",
    "read_model_shapes",
    "read_rounds",
    "read_run_config",
]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PRIVACY = "privacy.json"
MODEL = "model.safetensors"
# Keys every line of metrics.jsonl has (the contract); later fields (``refused``, ``faults``,
# ``epsilon_max``, ``bytes_down``: downlink bytes sent to the round's clients) may be absent in
# old runs and read as empty or 0.
ROUND_KEYS = (
    "round",
    "accuracy",
    "loss",
    "watermark_accuracy",
    "clients",
    "rejected",
    "flagged",
    "bytes_sealed",
    "bytes_dense",
    "seconds",
)


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
    """One line of ``metrics.jsonl``; ``to_json`` gives its keys in this order."""

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
    bytes_down: int = 0

    @classmethod
    def from_json(cls, doc: Any, what: str = "a round") -> RoundRecord:
        """Check one ``metrics.jsonl`` object and rebuild the round (errors name ``what``)."""
        return _round(Fields(METRICS), doc, what)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of this round."""
        doc = asdict(self)
        doc["rejected"] = [asdict(r) for r in self.rejected]
        return doc


def _round(f: Fields, value: Any, what: str) -> RoundRecord:
    doc = f.obj(value, what)
    f.need(doc, ROUND_KEYS, what)
    wm = doc["watermark_accuracy"]
    return RoundRecord(
        round=f.integer(doc["round"], f"{what} round", minimum=1),
        accuracy=f.number(doc["accuracy"], f"{what} accuracy", finite=False),
        loss=f.number(doc["loss"], f"{what} loss", finite=False),
        watermark_accuracy=None if wm is None else f.number(wm, f"{what} watermark_accuracy"),
        clients=f.integers(doc["clients"], f"{what} clients"),
        rejected=[_rejection(f, r, what) for r in f.array(doc["rejected"], f"{what} rejected")],
        flagged=f.integers(doc["flagged"], f"{what} flagged"),
        bytes_sealed=f.integer(doc["bytes_sealed"], f"{what} bytes_sealed"),
        bytes_dense=f.integer(doc["bytes_dense"], f"{what} bytes_dense"),
        seconds=f.number(doc["seconds"], f"{what} seconds"),
        refused=f.integers(doc.get("refused", []), f"{what} refused"),
        faults=[
            f.obj(x, f"{what} fault") for x in f.array(doc.get("faults", []), f"{what} faults")
        ],
        epsilon_max=f.number(doc.get("epsilon_max", 0.0), f"{what} epsilon_max"),
        bytes_down=f.integer(doc.get("bytes_down", 0), f"{what} bytes_down"),
    )


def _rejection(f: Fields, value: Any, what: str) -> Rejection:
    rej = f.obj(value, f"{what} rejection")
    f.need(rej, ("node", "reason"), f"{what} rejection")
    return Rejection(
        node=f.integer(rej["node"], f"{what} rejection node"),
        reason=f.text(rej["reason"], f"{what} rejection reason"),
        detail=f.text(rej.get("detail", ""), f"{what} rejection detail"),
    )


def new_run_id() -> str:
    """Return a sortable, unique run id: UTC time and a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class RunDirectory:
    """Writes one run's files; every file is replaced atomically, ``metrics.jsonl`` appended."""

    CONFIG = CONFIG
    METRICS = METRICS
    PRIVACY = PRIVACY
    MODEL = MODEL
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
        write_atomic(self.path / CONFIG, (json.dumps(config, indent=2) + "\n").encode())

    def append_round(self, record: RoundRecord) -> None:
        """Append one round to ``metrics.jsonl`` and flush it to disk."""
        with (self.path / METRICS).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record.to_json()) + "\n")

    def truncate_rounds(self, last_round: int) -> None:
        """Drop ``metrics.jsonl`` lines after ``last_round`` (written after the last checkpoint).

        A last line torn by a crash inside ``append_round`` is dropped too.
        """
        path = self.path / METRICS
        if not path.exists():
            return
        kept = [r for r in read_rounds(self.path, growing=True) if r.round <= last_round]
        write_atomic(path, "".join(json.dumps(r.to_json()) + "\n" for r in kept).encode())

    def write_model(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None:
        """Write the global model as ``model.safetensors`` (``state_dict`` names)."""
        save_safetensors(self.path / MODEL, arrays)


def read_rounds(run_path: Path, *, growing: bool = False) -> list[RoundRecord]:
    """Return the rounds of ``run_path/metrics.jsonl``, checked, rounds increasing.

    A run that finished no round may have no ``metrics.jsonl``: that gives ``[]``. ``growing``:
    the run is still appending, so a last line without its newline is skipped, not refused.
    """
    path = run_path / METRICS
    f = Fields(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise f.error(f"not readable ({exc})") from None
    lines = text.splitlines()
    if growing and lines and not text.endswith("\n"):
        lines.pop()
    out: list[RoundRecord] = []
    for no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise f.error(f"line {no} is not JSON ({exc})") from None
        except RecursionError:
            raise f.error(f"line {no} is nested too deeply to be a round") from None
        record = _round(f, doc, f"line {no}")
        if out and record.round <= out[-1].round:
            raise f.error(f"line {no}: round {record.round} follows round {out[-1].round}")
        out.append(record)
    return out


def read_config(run_path: Path) -> dict[str, Any]:
    """Return ``run_path/config.json``: the resolved flat configuration (and the run tag)."""
    path = run_path / CONFIG
    f = Fields(path)
    if not path.is_file():
        raise f.error(f"missing; {run_path} is not a fedveil run directory")
    return f.obj(read_json(path), "the configuration")


def read_run_config(run_path: Path) -> FedveilConfig:
    """Return the configuration a run was started with (for ``fedveil resume``).

    Raises:
        RunFileError: ``config.json`` is missing or not a JSON object.
        ConfigError: it holds a key or value this version does not accept.

    """
    flat = read_config(run_path)
    flat.pop(protocol.RUN_TAG, None)
    return FedveilConfig.from_flat(flat)


def read_model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Return the tensor shapes of a safetensors file, reading only its header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118 (not iterable)
    except (SafetensorError, OSError) as exc:
        raise Fields(path).error(f"not a safetensors file ({exc})") from None

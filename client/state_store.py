"""A node's durable state: privacy history, error-feedback residual, downlink references.

Layout of a state directory (``--node-config "state-dir=..."``, or in simulation the run's
``client-state-dir`` with one subfolder per partition)::

    privacy.json             ``ClientPrivacyState`` (run tag, σ, history, rounds)
    residual.safetensors     the error-feedback residual, one float32 vector
    downlink.safetensors     the last downlink references (at most two float32 vectors)

Every write is atomic, so a crash leaves the previous round's state intact. A file that is
corrupt or belongs to another run makes the node refuse to take part; nothing is overwritten.
The files are mode 0600 from their first byte, and folders this module creates 0700: a node's
privacy history and residual (a function of its updates) are for its owner only. The
references are named by their digest, recomputed on load, so a damaged file only costs a resync.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Context

from client.privacy_state import STATE_KEY, ClientPrivacyState, PrivacyStateError
from common.files import SECRET_MODE, write_atomic
from common.weights import WeightsError, load_safetensors

PRIVACY_FILE = "privacy.json"
RESIDUAL_FILE = "residual.safetensors"
RESIDUAL_KEY = "fedveil.residual"
REFERENCES_FILE = "downlink.safetensors"
REFERENCES_KEY = "fedveil.downlink"
MAX_REFERENCES = 2
FOLDER_MODE = 0o700

log = logging.getLogger(__name__)


class StateStore:
    """Reads and writes one node's state directory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load_privacy(self, run_tag: str) -> ClientPrivacyState | None:
        """Return the stored privacy state of ``run_tag``; ``None`` if there is none yet."""
        path = self.folder / PRIVACY_FILE
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise PrivacyStateError(
                f"{path} is corrupt ({problem}); refusing to take part"
            ) from None
        try:
            state = ClientPrivacyState.from_json(doc)
        except PrivacyStateError as exc:
            raise PrivacyStateError(f"{path}: {exc}; refusing to take part") from None
        if state.run_tag != run_tag:
            raise PrivacyStateError(
                f"{path} belongs to run {state.run_tag}, not run {run_tag}; give this node a "
                f"fresh state-dir for a new run (nothing was overwritten)"
            )
        return state

    def _make_folder(self) -> None:
        """Create the state folder and its missing parents with mode 0700 (existing ones stay)."""
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir(mode=FOLDER_MODE, exist_ok=True)

    def save_privacy(self, state: ClientPrivacyState) -> None:
        """Write the privacy state atomically, mode 0600."""
        self._make_folder()
        data = json.dumps(state.to_json()).encode()
        write_atomic(self.folder / PRIVACY_FILE, data, mode=SECRET_MODE)

    def load_residual(self, size: int) -> npt.NDArray[np.float32] | None:
        """Return the stored residual of length ``size``; ``None`` if there is none or it is bad.

        Losing the residual costs only the compression error it carries, never privacy (it is
        post-processing of updates already charged), so an unreadable one is dropped, logged.
        """
        path = self.folder / RESIDUAL_FILE
        if not path.exists():
            return None
        try:
            return load_safetensors(path, {"residual": (size,)})["residual"]
        except WeightsError as exc:
            log.warning("dropping the error-feedback residual: %s", exc)
            return None

    def save_residual(self, residual: npt.NDArray[np.float32]) -> None:
        """Write the residual atomically, mode 0600, without fsync: it is cheap to lose.

        An fsync per round costs a noticeable share of a small client's round
        (docs/performance.md); the privacy state, which must never be lost, keeps its fsync.
        """
        from safetensors.numpy import save

        self._make_folder()
        data = save({"residual": np.asarray(residual, dtype=np.float32, order="C")})
        write_atomic(self.folder / RESIDUAL_FILE, data, mode=SECRET_MODE, durable=False)

    def load_references(self, size: int) -> list[npt.NDArray[np.float32]]:
        """Return the stored downlink references of length ``size`` (none if unreadable).

        Losing them costs one model sent from zeros, never privacy, so a bad file is dropped.
        """
        path = self.folder / REFERENCES_FILE
        if not path.exists():
            return []
        names = [f"ref-{i}" for i in range(MAX_REFERENCES)]
        for count in range(MAX_REFERENCES, 0, -1):
            try:
                found = load_safetensors(path, {n: (size,) for n in names[:count]})
            except WeightsError:
                continue
            return [found[n] for n in names[:count]]
        log.warning("dropping the downlink references in %s: not readable", path)
        return []

    def save_references(self, references: list[npt.NDArray[np.float32]]) -> None:
        """Write at most ``MAX_REFERENCES`` references atomically, mode 0600, without fsync."""
        from safetensors.numpy import save

        self._make_folder()
        arrays = {
            f"ref-{i}": np.asarray(r, dtype=np.float32, order="C")
            for i, r in enumerate(references[:MAX_REFERENCES])
        }
        write_atomic(self.folder / REFERENCES_FILE, save(arrays), mode=SECRET_MODE, durable=False)


class NodeState:
    """A node's state in memory (``context.state``) and, with a state directory, on disk.

    Disk is authoritative when present: a restarted node has lost its memory, not its disk.
    """

    def __init__(self, context: Context, store: StateStore | None) -> None:
        self.context = context
        self.store = store

    @classmethod
    def for_node(cls, context: Context, default_root: str, partition_id: int) -> NodeState:
        """Use ``state-dir`` from the node config, else ``<default_root>/partition-<id>``."""
        folder = str(context.node_config.get("state-dir", "")).strip()
        if folder:
            return cls(context, StateStore(Path(folder).expanduser()))
        if default_root:
            return cls(context, StateStore(Path(default_root) / f"partition-{partition_id}"))
        return cls(context, None)

    def load_privacy(self, run_tag: str) -> ClientPrivacyState | None:
        """Return this node's privacy state for ``run_tag`` (disk first, then memory)."""
        if self.store is not None:
            stored = self.store.load_privacy(run_tag)
            if stored is not None:
                return stored
        record = self.context.state.config_records.get(STATE_KEY)
        if record is None:
            return None
        state = ClientPrivacyState.from_record(record)
        if state.run_tag != run_tag:
            raise PrivacyStateError(
                f"this node's privacy state belongs to run {state.run_tag}, not {run_tag}"
            )
        return state

    def save_privacy(self, state: ClientPrivacyState) -> None:
        """Keep the privacy state in memory and, durably, on disk."""
        if self.store is not None:
            self.store.save_privacy(state)
        self.context.state[STATE_KEY] = state.to_record()

    def load_residual(self, size: int) -> npt.NDArray[np.float32] | None:
        """Return the error-feedback residual of length ``size``, if any."""
        if self.store is not None:
            return self.store.load_residual(size)
        record = self.context.state.array_records.get(RESIDUAL_KEY)
        if record is None:
            return None
        residual = record["residual"].numpy().astype(np.float32)
        return residual if residual.shape == (size,) else None

    def save_residual(self, residual: npt.NDArray[np.float32]) -> None:
        """Keep the residual for the next round."""
        if self.store is not None:
            self.store.save_residual(residual)
        else:
            self.context.state[RESIDUAL_KEY] = ArrayRecord({"residual": Array(residual)})

    def load_references(self, size: int) -> list[npt.NDArray[np.float32]]:
        """Return the downlink references of length ``size`` this node keeps (disk, else memory)."""
        if self.store is not None:
            return self.store.load_references(size)
        record = self.context.state.array_records.get(REFERENCES_KEY)
        if record is None:
            return []
        kept = [a.numpy().astype(np.float32) for a in record.values()]
        return [r for r in kept if r.shape == (size,)]

    def save_references(self, references: list[npt.NDArray[np.float32]]) -> None:
        """Keep at most ``MAX_REFERENCES`` downlink references for the next rounds."""
        if self.store is not None:
            self.store.save_references(references)
        else:
            self.context.state[REFERENCES_KEY] = ArrayRecord(
                {f"ref-{i}": Array(r) for i, r in enumerate(references[:MAX_REFERENCES])}
            )

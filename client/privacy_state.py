"""A client's privacy state: what it has spent, kept across rounds and never reset.

The state holds the run it belongs to and one history entry per round trained, so ε can be
recomputed at any time with any accountant. It lives in the node's ``context.state`` (Flower
keeps it per node across rounds, in memory) and, when the node has a state directory, on disk
(``client.state_store``), so a restarted SuperNode continues its ε instead of starting at zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord

from common.accounting import HistoryEntry, epsilon_from_history

STATE_KEY = "fedveil.privacy"
STATE_VERSION = 1


class PrivacyStateError(ValueError):
    """The stored privacy state is corrupt or belongs to another run."""


@dataclass
class ClientPrivacyState:
    """The run's tag, the client's own calibrated σ, and ``(σ, q, steps)`` per round trained."""

    run_tag: str
    noise_multiplier: float
    history: list[HistoryEntry] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """Return ε spent so far."""
        return epsilon_from_history(self.history, delta=delta, accountant=accountant)

    def epsilon_after(self, entry: HistoryEntry, *, delta: float, accountant: str) -> float:
        """Return the ε this client would have spent after one more round of ``entry``."""
        return epsilon_from_history([*self.history, entry], delta=delta, accountant=accountant)

    def record(self, server_round: int, entry: HistoryEntry) -> None:
        """Add one trained round; a round is never counted twice."""
        if server_round in self.rounds:
            raise PrivacyStateError(f"round {server_round} is already in the privacy history")
        self.history.append(entry)
        self.rounds.append(server_round)

    def to_json(self) -> dict[str, Any]:
        """Return the state as a JSON object."""
        return {
            "version": STATE_VERSION,
            "run_tag": self.run_tag,
            "noise_multiplier": self.noise_multiplier,
            "history": [[s, q, n] for s, q, n in self.history],
            "rounds": list(self.rounds),
        }

    @classmethod
    def from_json(cls, doc: Any) -> ClientPrivacyState:
        """Load and validate a stored state."""
        try:
            if doc["version"] != STATE_VERSION:
                raise PrivacyStateError(f"privacy state version {doc['version']} is unknown")
            history = [(float(s), float(q), int(n)) for s, q, n in doc["history"]]
            rounds = [int(r) for r in doc["rounds"]]
            state = cls(str(doc["run_tag"]), float(doc["noise_multiplier"]), history, rounds)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PrivacyStateError):
                raise
            raise PrivacyStateError(f"stored privacy state is unreadable ({exc})") from None
        if len(history) != len(rounds) or len(set(rounds)) != len(rounds):
            raise PrivacyStateError("stored privacy state counts a round twice or loses one")
        if any(not (s > 0 and 0 < q <= 1 and n >= 1 and math.isfinite(s)) for s, q, n in history):
            raise PrivacyStateError("stored privacy state has out-of-range history entries")
        return state

    def to_record(self) -> ConfigRecord:
        """Serialise into a ``ConfigRecord`` for ``context.state``."""
        return ConfigRecord({"json": json.dumps(self.to_json())})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ClientPrivacyState:
        """Load a state kept in ``context.state``."""
        try:
            return cls.from_json(json.loads(str(record["json"])))
        except (KeyError, ValueError) as exc:
            if isinstance(exc, PrivacyStateError):
                raise
            raise PrivacyStateError(f"stored privacy state is unreadable ({exc})") from None

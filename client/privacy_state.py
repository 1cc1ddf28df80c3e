"""A client's privacy state: what it has spent, kept across rounds and never reset.

The state lives in the node's ``context.state`` (which Flower keeps per node across rounds) as a
``ConfigRecord``. It holds the noise multiplier fixed at the first round and one history entry per
round trained, so ε can be recomputed at any time with any accountant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord

from common.accounting import HistoryEntry, epsilon_from_history

STATE_KEY = "fedveil.privacy"


class PrivacyStateError(ValueError):
    """The stored privacy state is inconsistent (corrupt or from another run)."""


@dataclass
class ClientPrivacyState:
    """Noise multiplier σ chosen for this run, and ``(σ, q, steps)`` per round trained."""

    run_id: int
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

    def to_record(self) -> ConfigRecord:
        """Serialise into a ``ConfigRecord`` for ``context.state``."""
        return ConfigRecord(
            {
                "run-id": self.run_id,
                "noise-multiplier": self.noise_multiplier,
                "sigma": [float(s) for s, _, _ in self.history],
                "sample-rate": [float(q) for _, q, _ in self.history],
                "steps": [int(n) for _, _, n in self.history],
                "rounds": list(self.rounds),
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ClientPrivacyState:
        """Load and validate a stored state."""
        try:
            sigmas = [float(v) for v in record["sigma"]]  # type: ignore[union-attr]
            rates = [float(v) for v in record["sample-rate"]]  # type: ignore[union-attr]
            steps = [int(v) for v in record["steps"]]  # type: ignore[union-attr]
            rounds = [int(v) for v in record["rounds"]]  # type: ignore[union-attr]
            run_id = int(record["run-id"])  # type: ignore[arg-type]
            sigma = float(record["noise-multiplier"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyStateError(f"stored privacy state is unreadable ({exc})") from None
        if not len(sigmas) == len(rates) == len(steps) == len(rounds):
            raise PrivacyStateError("stored privacy state has history columns of unequal length")
        if len(set(rounds)) != len(rounds):
            raise PrivacyStateError("stored privacy state counts a round twice")
        return cls(run_id, sigma, list(zip(sigmas, rates, steps, strict=True)), rounds)

"""A device owner's own privacy limits, from the node config, which no server can raise.

Node config keys (a SuperNode's ``--node-config``, set on the device, never sent by the server):

    ``max-epsilon``           ε (at the run's δ and accountant) this node never passes in a run
    ``min-noise-multiplier``  the smallest σ this node trains with, whatever the plan assigns
    ``max-rounds``            rounds this node trains at most in a run

Each is optional (absent: no limit of the node's own). ``NodeLimits.of`` reads and checks them;
``refuse_round`` and ``refuse_epsilon`` name the limit a round would break, checked against the
round this node would actually train (its own σ, q, steps and ε), so neither the run config nor
a relay that alters the plaintext request can take the node past them. Caveat: ε is measured at
the run's ``dp.delta``, which the server sets; the limits say nothing about δ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from common import protocol

MAX_EPSILON = "max-epsilon"
MIN_NOISE_MULTIPLIER = "min-noise-multiplier"
MAX_ROUNDS = "max-rounds"


class NodeConfigError(ValueError):
    """A node-config limit is unusable; the message is one line naming the key and the fix."""

    def __init__(self, key: str, value: object, wanted: str, example: str) -> None:
        super().__init__(
            f"node config `{key}` = {value!r:.40} is not {wanted}; the device owner must set it "
            f"to {wanted} ({key}={example}, unquoted) or remove it"
        )
        self.key = key


def _number(node_config: Mapping[str, object], key: str, example: str) -> float | None:
    value = node_config.get(key)
    if value is None:
        return None
    wanted = "a finite number > 0"
    # bool is an int in Python; a quoted "8" is a string: both are mistakes worth naming.
    if type(value) not in (int, float):
        raise NodeConfigError(key, value, wanted, example)
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and number > 0):
        raise NodeConfigError(key, value, wanted, example)
    return number


def _count(node_config: Mapping[str, object], key: str, example: str) -> int | None:
    value = node_config.get(key)
    if value is None:
        return None
    wanted = "a whole number >= 1"
    if type(value) is int and value >= 1:
        return value
    if type(value) is float and value.is_integer() and value >= 1:
        return int(value)
    raise NodeConfigError(key, value, wanted, example)


@dataclass(frozen=True)
class NodeLimits:
    """The node's own limits; ``None`` where the device owner set none."""

    max_epsilon: float | None = None
    min_noise_multiplier: float | None = None
    max_rounds: int | None = None

    @classmethod
    def of(cls, node_config: Mapping[str, object]) -> NodeLimits:
        """Read the limits from a node config.

        Raises:
            NodeConfigError: a limit is not a number, or is NaN, infinite, zero or negative
                (``max-rounds``: not a whole number >= 1).

        """
        return cls(
            max_epsilon=_number(node_config, MAX_EPSILON, "8"),
            min_noise_multiplier=_number(node_config, MIN_NOISE_MULTIPLIER, "0.8"),
            max_rounds=_count(node_config, MAX_ROUNDS, "20"),
        )

    def metrics(self) -> dict[str, float]:
        """Return the limits set, under their protocol metric keys (unset ones are absent)."""
        values = {
            protocol.NODE_MAX_EPSILON: self.max_epsilon,
            protocol.NODE_MIN_NOISE: self.min_noise_multiplier,
            protocol.NODE_MAX_ROUNDS: self.max_rounds,
        }
        return {k: float(v) for k, v in values.items() if v is not None}

    def refuse_round(
        self, *, server_round: int, noise_multiplier: float, rounds_trained: int
    ) -> tuple[str, str] | None:
        """Return ``(key, one-line reason)`` if σ or the round count breaks a limit, else None.

        Checked before any accounting, so an absurd σ never reaches the accountant.

        Args:
            server_round: the round asked for.
            noise_multiplier: the σ the node would train this round with.
            rounds_trained: rounds this node has trained in this run so far.

        """
        if self.min_noise_multiplier is not None and not (
            noise_multiplier >= self.min_noise_multiplier
        ):
            return MIN_NOISE_MULTIPLIER, (
                f"refused: round {server_round} asks for noise multiplier {noise_multiplier:.4g}, "
                f"below this node's limit {MIN_NOISE_MULTIPLIER} = {self.min_noise_multiplier:g}"
            )
        if self.max_rounds is not None and rounds_trained >= self.max_rounds:
            return MAX_ROUNDS, (
                f"refused: round {server_round} would be this node's training round "
                f"{rounds_trained + 1} in this run, past its limit {MAX_ROUNDS} = {self.max_rounds}"
            )
        return None

    def refuse_epsilon(
        self, *, server_round: int, epsilon_spent: float, epsilon_after: float
    ) -> tuple[str, str] | None:
        """Return ``(key, one-line reason)`` if ε after the round passes ``max-epsilon``.

        Args:
            server_round: the round asked for.
            epsilon_spent: ε before the round.
            epsilon_after: ε after the round, as the node's own accountant computes it.

        """
        if self.max_epsilon is not None and not epsilon_after <= self.max_epsilon:
            return MAX_EPSILON, (
                f"refused: round {server_round} would take ε from {epsilon_spent:.3f} to "
                f"{epsilon_after:.3f}, past this node's limit {MAX_EPSILON} = {self.max_epsilon:g}"
            )
        return None

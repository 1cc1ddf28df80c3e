"""The DP plan, made before the first round: σ, q, steps and expected ε for every client.

The server asks each node for its sampling rate and steps per round (a ``query`` message: the
client reveals ``ceil(n / batch-size)``, which its DP facts reveal anyway), then calibrates a
noise multiplier per client with Opacus's accountant utilities so that a client training as
often as the sampling plan expects ends at ``dp.target-epsilon``. The plan is shown before
training starts, stored in ``privacy.json`` and compared with what was spent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import Message, MessageType, RecordDict

from common import protocol
from common.accounting import calibrate_noise_multiplier, epsilon_from_history
from common.config import ConfigError, FedveilConfig


@dataclass(frozen=True)
class ClientPlan:
    """One client's DP parameters for the run and the ε they are expected to cost.

    ``noise_multiplier`` σ is relative to ``dp.max-grad-norm``; ``sample_rate`` is the Poisson
    rate q; ``steps_per_round`` DP-SGD steps per round trained; ``planned_rounds`` is the
    number of rounds the sampling plan expects the client to train.
    """

    client_id: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    planned_epsilon: float
    one_round_epsilon: float

    def to_json(self) -> dict[str, Any]:
        """Return the plan as a JSON object."""
        return asdict(self)


def expected_rounds(config: FedveilConfig, num_clients: int) -> int:
    """Return the rounds a client is expected to train: ``R * sample_size / N``, rounded up."""
    size = min(num_clients, max(config.min_train_clients, int(config.fraction_train * num_clients)))
    return max(1, math.ceil(config.num_server_rounds * size / max(num_clients, 1)))


def plan_client(
    config: FedveilConfig,
    client_id: str,
    *,
    sample_rate: float,
    steps_per_round: int,
    planned_rounds: int,
) -> ClientPlan:
    """Calibrate σ for one client (or take ``dp.noise-multiplier``) and predict its ε."""
    if config.dp_noise_multiplier > 0:
        sigma = config.dp_noise_multiplier
    else:
        sigma = calibrate_noise_multiplier(
            target_epsilon=config.dp_target_epsilon,
            delta=config.dp_delta,
            sample_rate=sample_rate,
            steps=planned_rounds * steps_per_round,
            accountant=config.dp_accountant,
        )

    def eps(rounds: int) -> float:
        return epsilon_from_history(
            [(sigma, sample_rate, rounds * steps_per_round)],
            delta=config.dp_delta,
            accountant=config.dp_accountant,
        )

    return ClientPlan(
        client_id=client_id,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps_per_round=steps_per_round,
        planned_rounds=planned_rounds,
        planned_epsilon=eps(planned_rounds),
        one_round_epsilon=eps(1),
    )


def query_messages(config: FedveilConfig, nodes: list[int]) -> list[Message]:
    """Build the planning queries: the run-config keys a client needs, nothing else."""
    return [
        Message(
            content=RecordDict(
                {protocol.CONFIG: protocol.config_record(config.to_client_flat(), 0)}
            ),
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in nodes
    ]


def read_plan_reply(reply: Message) -> tuple[str, float, int]:
    """Return ``(client_id, sample_rate, steps_per_round)`` from a planning reply.

    Raises:
        ValueError: the query failed, the node refused (its one-line reason: e.g. no usable
            data), or the facts are missing or out of range.

    """
    if reply.has_error():
        raise ValueError(f"planning query failed: {reply.error.reason}")
    status = reply.content.config_records.get(protocol.STATUS)
    if status is not None and status.get("status") == protocol.STATUS_REFUSED:
        raise ValueError(str(status.get("reason", "refused, no reason given")))
    metrics = reply.content.metric_records.get(protocol.METRICS)
    try:
        client = metrics[protocol.CLIENT_ID]  # type: ignore[index]
        rate = metrics[protocol.SAMPLE_RATE]  # type: ignore[index]
        steps = metrics[protocol.STEPS]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError("planning reply lacks client-id, dp-sample-rate or dp-steps") from None
    if not (isinstance(rate, float) and 0 < rate <= 1 and isinstance(steps, float) and steps >= 1):
        raise ValueError(f"planning reply has out-of-range facts q={rate} steps={steps}")
    return str(int(client)), float(rate), int(steps)  # type: ignore[arg-type]


def check_budget_allows_a_round(config: FedveilConfig, plans: list[ClientPlan]) -> None:
    """Refuse a ``dp.budget`` below what one round costs every client, naming what works."""
    if not plans:
        return
    cheapest = min(p.one_round_epsilon for p in plans)
    if config.dp_budget < cheapest:
        raise ConfigError(
            f"config key `dp.budget` = {config.dp_budget:g} is below what one round costs "
            f"any client (ε {cheapest:.4f}); the smallest budget that works is "
            f"{math.ceil(cheapest * 1000) / 1000:.3f}"
        )

"""The DP plan, made before the first round: σ, q, steps and expected ε for every client.

The server asks each node for its sampling rate and steps per round (a ``query`` message: the
client reveals ``ceil(n / batch-size)``, which its DP facts reveal anyway), then calibrates a
noise multiplier per client with Opacus's accountant utilities so that a client training as
often as the sampling plan expects ends at ``dp.target-epsilon``. The plan is shown before
training starts, stored in ``privacy.json`` and compared with what was spent. A node's planning
reply is peer input: q and steps must lie in ``common.accounting.ACCOUNTABLE``, and a node's own
``node-min-noise-multiplier`` raises its σ (it would refuse a lower one). The plan is what the
server later holds each train reply's DP facts to (``server.strategy.sealed``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import Message, MessageType, MetricRecord, RecordDict

from common import protocol
from common.accounting import ACCOUNTABLE, calibrate_noise_multiplier, epsilon_from_history
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
    min_noise: float = 0.0,
) -> ClientPlan:
    """Calibrate σ for one client (or take ``dp.noise-multiplier``) and predict its ε.

    ``min_noise`` is the node's own floor on σ: the plan never assigns less.

    Raises:
        ConfigError: the DP settings give a σ or an ε no accountant computes (one line).

    """
    try:
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
        sigma = max(sigma, min_noise)

        def eps(rounds: int) -> float:
            return epsilon_from_history(
                [(sigma, sample_rate, rounds * steps_per_round)],
                delta=config.dp_delta,
                accountant=config.dp_accountant,
            )

        planned_epsilon, one_round = eps(planned_rounds), eps(1)
    except (ArithmeticError, ValueError, MemoryError) as exc:
        low, high = ACCOUNTABLE.sigma
        raise ConfigError(
            f"config keys `dp.noise-multiplier` = {config.dp_noise_multiplier:g}, "
            f"`dp.target-epsilon` = {config.dp_target_epsilon:g}, `dp.delta` = "
            f"{config.dp_delta:g} give no plan an accountant computes for q = {sample_rate:g}, "
            f"{steps_per_round} steps per round ({' '.join(str(exc).split())}); keep σ in "
            f"[{low:g}, {high:g}] and δ, ε to usual values"
        ) from None
    return ClientPlan(
        client_id=client_id,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps_per_round=steps_per_round,
        planned_rounds=planned_rounds,
        planned_epsilon=planned_epsilon,
        one_round_epsilon=one_round,
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
        raise ValueError(f"planning query failed (Flower error {reply.error.code})")
    status = reply.content.config_records.get(protocol.STATUS)
    if status is not None and status.get("status") == protocol.STATUS_REFUSED:
        raise ValueError(" ".join(str(status.get("reason", "refused, no reason given")).split()))
    metrics = reply.content.metric_records.get(protocol.METRICS)
    if metrics is None:
        raise ValueError("planning reply lacks client-id, dp-sample-rate or dp-steps")
    client, rate, steps = (
        _number(metrics.get(k)) for k in (protocol.CLIENT_ID, protocol.SAMPLE_RATE, protocol.STEPS)
    )
    domain = ACCOUNTABLE
    if (
        client is None
        or rate is None
        or steps is None
        or not (client.is_integer() and 0 <= client < 2**53)
        or not domain.rate[0] <= rate <= domain.rate[1]
        or not (steps.is_integer() and domain.steps[0] <= steps <= domain.steps[1])
    ):
        raise ValueError(
            f"planning reply lacks or has out-of-range facts: client-id={client} q={rate} "
            f"steps={steps}"
        )
    return str(int(client)), rate, int(steps)


def _number(value: object) -> float | None:
    """Return a metric value as a float if it is a finite number, else ``None``."""
    if type(value) not in (int, float):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def node_limits(metrics: MetricRecord | None) -> dict[str, float]:
    """Return the node's own limits a reply's ``metrics`` report (finite positive ones only)."""
    limits: dict[str, float] = {}
    for key in protocol.NODE_LIMIT_METRICS:
        value = None if metrics is None else _number(metrics.get(key))
        if value is not None and value > 0:
            limits[key] = value
    return limits


def check_budget_allows_a_round(config: FedveilConfig, plans: list[ClientPlan]) -> None:
    """Refuse a ``dp.budget`` no plan can work under, with one line naming what works.

    A calibrated target ε above the budget is refused outright: every client would be stopped
    at the budget, part-way through the rounds its σ was calibrated for. A budget below what one
    round costs every client is refused naming the smallest budget that works.
    """
    if config.dp_noise_multiplier == 0 and config.dp_target_epsilon > config.dp_budget:
        raise ConfigError(
            f"config key `dp.target-epsilon` = {config.dp_target_epsilon:g} is above "
            f"`dp.budget` = {config.dp_budget:g}: every client would stop at the budget before "
            f"the rounds it was planned for; lower the target or raise the budget"
        )
    if not plans:
        return
    cheapest = min(p.one_round_epsilon for p in plans)
    if config.dp_budget < cheapest:
        raise ConfigError(
            f"config key `dp.budget` = {config.dp_budget:g} is below what one round costs "
            f"any client (ε {cheapest:.4f}); the smallest budget that works is "
            f"{math.ceil(cheapest * 1000) / 1000:.3f}"
        )

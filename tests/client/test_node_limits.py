"""A device owner's own limits (node config): read, reported, and enforced whatever the run says."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message

from client import training_round as steps
from client.app import app
from client.local_data import load_local_data
from client.node_limits import (
    MAX_EPSILON,
    MAX_ROUNDS,
    MIN_NOISE_MULTIPLIER,
    NodeConfigError,
    NodeLimits,
)
from client.privacy_state import STATE_KEY, ClientPrivacyState
from common import protocol
from common.accounting import epsilon_from_history, sample_rate, steps_per_round
from common.config import FedveilConfig
from common.models import create_model
from server.planning import read_plan_reply
from tests.conftest import client_context

# σ fixed so every round costs the same, and a run budget far above anything a node allows:
# whatever stops a round below comes from the node's own config.
CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4}).replace(
    dp_noise_multiplier=1.0, dp_budget=100.0
)


def _global() -> ArrayRecord:
    return ArrayRecord(create_model("mlp", 10, seed=0).state_dict())


def _status(reply: Message) -> dict[str, Any]:
    return dict(reply.content.config_records[protocol.STATUS])


def _metrics(reply: Message) -> dict[str, Any]:
    return dict(reply.content.metric_records[protocol.METRICS])


def _rounds_charged(ctx: Any) -> list[int]:
    record = ctx.state.config_records.get(STATE_KEY)
    return [] if record is None else ClientPrivacyState.from_record(record).rounds


def _epsilon_after(rounds: int, partition: int) -> float:
    n = int(load_local_data(CONFIG, client_context(partition, 4)).labels.shape[0])
    entry = (1.0, sample_rate(n, CONFIG.batch_size), steps_per_round(n, CONFIG.batch_size, 2))
    return epsilon_from_history([entry] * rounds, delta=CONFIG.dp_delta, accountant="rdp")


def _assert_node_limit_refusal(reply: Message, key: str) -> str:
    status = _status(reply)
    assert status["status"] == protocol.STATUS_REFUSED
    assert (status[protocol.CAUSE], status[protocol.LIMIT]) == (protocol.CAUSE_NODE_LIMIT, key)
    assert protocol.UPDATE not in reply.content.config_records
    reason = str(status["reason"])
    assert key in reason and "\n" not in reason
    return reason


# ------------------------------------------------------------------------- reading the limits
def test_limits_are_read_from_the_node_config_and_reported_under_protocol_keys() -> None:
    limits = NodeLimits.of(
        {"partition-id": 0, MAX_EPSILON: 3, MIN_NOISE_MULTIPLIER: 0.8, MAX_ROUNDS: 2.0}
    )

    assert limits == NodeLimits(max_epsilon=3.0, min_noise_multiplier=0.8, max_rounds=2)
    assert limits.metrics() == {
        protocol.NODE_MAX_EPSILON: 3.0,
        protocol.NODE_MIN_NOISE: 0.8,
        protocol.NODE_MAX_ROUNDS: 2.0,
    }
    assert NodeLimits.of({"partition-id": 0}).metrics() == {}  # unset: absent, not zero


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (MAX_EPSILON, "8"),
        (MAX_EPSILON, True),
        (MAX_EPSILON, math.nan),
        (MAX_EPSILON, math.inf),
        (MAX_EPSILON, -1),
        (MAX_EPSILON, 0),
        (MIN_NOISE_MULTIPLIER, -0.5),
        (MIN_NOISE_MULTIPLIER, math.nan),
        (MIN_NOISE_MULTIPLIER, "high"),
        (MAX_ROUNDS, 2.5),
        (MAX_ROUNDS, 0),
        (MAX_ROUNDS, -3),
        (MAX_ROUNDS, "3"),
    ],
)
def test_a_bad_limit_value_is_one_line_naming_the_key_and_the_fix(key: str, value: object) -> None:
    with pytest.raises(NodeConfigError) as bad:
        NodeLimits.of({key: value})

    said = str(bad.value)
    assert bad.value.key == key
    assert f"`{key}`" in said and "must set it to" in said and "\n" not in said


# ---------------------------------------------------------------------- enforced in a round
def test_a_round_past_max_epsilon_is_refused_whatever_the_run_budget(
    train_request: Callable[..., Message],
) -> None:
    limit = _epsilon_after(2, partition=2) * 1.001
    ctx = client_context(2, 4, **{MAX_EPSILON: limit})

    replies = [app(train_request(CONFIG, _global(), r), ctx) for r in (1, 2, 3)]

    assert [_status(r)["status"] for r in replies] == ["trained", "trained", "refused"]
    reason = _assert_node_limit_refusal(replies[2], MAX_EPSILON)
    assert f"{limit:g}" in reason
    assert _rounds_charged(ctx) == [1, 2]  # the refused round spent nothing
    spent = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY]).epsilon(
        delta=CONFIG.dp_delta, accountant="rdp"
    )
    assert spent <= limit < CONFIG.dp_budget
    # Every train reply, trained or refused, carries the node's limit.
    assert {_metrics(r).get(protocol.NODE_MAX_EPSILON) for r in replies} == {limit}
    assert protocol.NODE_MAX_ROUNDS not in _metrics(replies[0])


@pytest.mark.parametrize("asked", [0.5, 1e-300])
def test_noise_below_the_nodes_floor_is_refused_before_any_privacy_is_spent(
    asked: float, train_request: Callable[..., Message]
) -> None:
    # The plaintext request says σ = asked: a server's plan or a relay that altered it.
    ctx = client_context(1, 4, **{MIN_NOISE_MULTIPLIER: 0.8})
    low = train_request(CONFIG, _global(), 1)
    low.content[protocol.DP] = ConfigRecord({protocol.ASSIGNED_NOISE: asked})

    reply = app(low, ctx)

    _assert_node_limit_refusal(reply, MIN_NOISE_MULTIPLIER)
    assert _rounds_charged(ctx) == []
    assert _metrics(reply)[protocol.NODE_MIN_NOISE] == 0.8
    fine = train_request(CONFIG, _global(), 2)
    fine.content[protocol.DP] = ConfigRecord({protocol.ASSIGNED_NOISE: 0.9})
    trained = app(fine, ctx)
    assert _status(trained)["status"] == protocol.STATUS_TRAINED
    assert _metrics(trained)[protocol.NOISE_MULTIPLIER] == 0.9


@pytest.mark.parametrize("asked", [1e-300, 1e300])
def test_a_noise_no_accountant_computes_is_refused_without_a_node_limit(
    asked: float, train_request: Callable[..., Message]
) -> None:
    # No owner floor: the node still refuses σ it cannot account for, in one line.
    ctx = client_context(1, 4)
    absurd = train_request(CONFIG, _global(), 1)
    absurd.content[protocol.DP] = ConfigRecord({protocol.ASSIGNED_NOISE: asked})

    reply = app(absurd, ctx)

    status = _status(reply)
    assert status["status"] == protocol.STATUS_REFUSED
    assert "outside what an accountant computes" in str(status["reason"])
    assert "\n" not in str(status["reason"])
    assert _rounds_charged(ctx) == []


def test_a_round_past_max_rounds_is_refused(train_request: Callable[..., Message]) -> None:
    ctx = client_context(0, 4, **{MAX_ROUNDS: 1})

    first = app(train_request(CONFIG, _global(), 1), ctx)
    second = app(train_request(CONFIG, _global(), 2), ctx)

    assert _status(first)["status"] == protocol.STATUS_TRAINED
    assert "round 2" in _assert_node_limit_refusal(second, MAX_ROUNDS)
    assert _rounds_charged(ctx) == [1]
    assert _metrics(second)[protocol.NODE_MAX_ROUNDS] == 1.0


def test_a_bad_limit_refuses_the_round_and_the_plan_naming_the_key(
    train_request: Callable[..., Message],
) -> None:
    ctx = client_context(0, 4, **{MAX_EPSILON: math.nan})

    reply = app(train_request(CONFIG, _global(), 1), ctx)

    status = _status(reply)
    assert status["status"] == protocol.STATUS_REFUSED
    assert (status[protocol.CAUSE], status[protocol.LIMIT]) == (
        protocol.CAUSE_NODE_CONFIG,
        MAX_EPSILON,
    )
    assert f"`{MAX_EPSILON}`" in str(status["reason"])
    assert STATE_KEY not in ctx.state.config_records  # nothing spent, nothing written
    query = train_request(CONFIG, _global(), 1)
    answer = Message(content=steps.answer_plan_query(query, ctx), reply_to=query)
    with pytest.raises(ValueError, match=MAX_EPSILON):
        read_plan_reply(answer)


def test_the_planning_reply_reports_the_limits_and_the_server_still_reads_it(
    train_request: Callable[..., Message],
) -> None:
    ctx = client_context(3, 4, **{MAX_EPSILON: 2.5, MAX_ROUNDS: 4})
    query = train_request(CONFIG, _global(), 1)

    answer = Message(content=steps.answer_plan_query(query, ctx), reply_to=query)

    metrics = _metrics(answer)
    assert (metrics[protocol.NODE_MAX_EPSILON], metrics[protocol.NODE_MAX_ROUNDS]) == (2.5, 4.0)
    assert protocol.NODE_MIN_NOISE not in metrics
    assert read_plan_reply(answer)[0] == "3"

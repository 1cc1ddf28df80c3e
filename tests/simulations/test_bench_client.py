"""The bench's ClientApp: the public train steps, timed, give the honest app's reply."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, Message

from client.app import app as honest_app
from common import protocol
from common.config import FedveilConfig
from common.models import create_model
from simulations.bench_client import STEPS, bench_client_app, timed_training_round
from simulations.bench_timing import TRACE_RECORD
from tests.conftest import client_context

CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})


def _global() -> ArrayRecord:
    return ArrayRecord(create_model("mlp", 10, seed=0).state_dict())


def _status(reply: Message) -> str:
    return str(reply.content.config_records[protocol.STATUS]["status"])


def test_a_trained_round_times_every_step_and_replies_like_the_honest_app(
    train_request: Callable[..., Message],
) -> None:
    content, seconds = timed_training_round(
        train_request(CONFIG, _global(), 1), client_context(1, 4)
    )
    honest = honest_app(train_request(CONFIG, _global(), 1), client_context(1, 4))

    assert tuple(seconds) == STEPS
    assert all(s >= 0 for s in seconds.values())
    assert set(content.keys()) == set(honest.content.keys())
    assert str(content.config_records[protocol.STATUS]["status"]) == protocol.STATUS_TRAINED
    mine, theirs = (
        content.metric_records[protocol.METRICS],
        honest.content.metric_records[protocol.METRICS],
    )
    assert dict(mine) == dict(theirs)


def test_a_declined_round_ends_at_the_budget_step(
    train_request: Callable[..., Message],
) -> None:
    config = CONFIG.replace(dp_noise_multiplier=1.0, dp_budget=0.001)

    content, seconds = timed_training_round(
        train_request(config, _global(), 1), client_context(0, 4)
    )

    assert str(content.config_records[protocol.STATUS]["status"]) == protocol.STATUS_REFUSED
    assert tuple(seconds) == ("read", "load", "budget")


def test_the_app_sends_the_steps_in_the_trace(train_request: Callable[..., Message]) -> None:
    reply = bench_client_app(CONFIG)(train_request(CONFIG, _global(), 1), client_context(2, 4))

    trace = reply.content.config_records[TRACE_RECORD]
    assert _status(reply) == protocol.STATUS_TRAINED
    assert set(STEPS) | {"total", "cpu", "round", "pid", "ray_node"} == set(trace)
    assert trace["round"] == 1

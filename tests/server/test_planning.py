"""The DP plan: hostile planning replies are refused, node floors respected, bad settings named."""

from __future__ import annotations

import math

import pytest
from flwr.app import Message, MetricRecord, RecordDict

from common import protocol
from common.config import ConfigError, FedveilConfig
from server.planning import check_budget_allows_a_round, node_limits, plan_client, read_plan_reply
from tests.server.strategy.fakes import reply_from

GOOD = {protocol.CLIENT_ID: 3.0, protocol.SAMPLE_RATE: 0.05, protocol.STEPS: 40.0}


def _reply(**metrics: float) -> Message:
    return reply_from(7, RecordDict({protocol.METRICS: MetricRecord({**GOOD, **metrics})}))


def test_a_usable_planning_reply_gives_label_rate_and_steps(task_identity: None) -> None:
    assert read_plan_reply(_reply()) == ("3", 0.05, 40)


@pytest.mark.parametrize(
    "bad",
    [
        {protocol.STEPS: 1e300},
        {protocol.STEPS: 0.0},
        {protocol.STEPS: 2.5},
        {protocol.STEPS: math.inf},
        {protocol.SAMPLE_RATE: math.nan},
        {protocol.SAMPLE_RATE: 0.0},
        {protocol.SAMPLE_RATE: 1e-300},
        {protocol.SAMPLE_RATE: 1.5},
        {protocol.CLIENT_ID: -1.0},
        {protocol.CLIENT_ID: 1.5},
        {protocol.CLIENT_ID: 1e300},
    ],
)
def test_planning_facts_no_accountant_computes_are_refused(
    task_identity: None, bad: dict[str, float]
) -> None:
    with pytest.raises(ValueError, match="out-of-range") as refused:
        read_plan_reply(_reply(**bad))

    assert "\n" not in str(refused.value)


def test_only_finite_positive_node_limits_are_kept(task_identity: None) -> None:
    metrics = MetricRecord(
        {
            protocol.NODE_MAX_EPSILON: 2.5,
            protocol.NODE_MIN_NOISE: math.nan,
            protocol.NODE_MAX_ROUNDS: -4.0,
        }
    )

    assert node_limits(metrics) == {protocol.NODE_MAX_EPSILON: 2.5}
    assert node_limits(None) == {}


def test_the_plan_never_assigns_less_than_the_nodes_own_floor() -> None:
    config = FedveilConfig.from_flat({"dp.noise-multiplier": 0.8})

    free = plan_client(config, "3", sample_rate=0.05, steps_per_round=40, planned_rounds=4)
    floored = plan_client(
        config, "3", sample_rate=0.05, steps_per_round=40, planned_rounds=4, min_noise=1.5
    )

    assert (free.noise_multiplier, floored.noise_multiplier) == (0.8, 1.5)
    assert floored.one_round_epsilon < free.one_round_epsilon


@pytest.mark.parametrize(
    "flat",
    [{"dp.noise-multiplier": 1e-300}, {"dp.noise-multiplier": 1e308}, {"dp.delta": 1e-300}],
)
def test_settings_no_accountant_computes_are_one_config_error(flat: dict[str, float]) -> None:
    config = FedveilConfig.from_flat(flat)

    with pytest.raises(ConfigError) as refused:
        plan_client(config, "3", sample_rate=0.05, steps_per_round=40, planned_rounds=4)

    assert "dp.noise-multiplier" in str(refused.value) and "\n" not in str(refused.value)


def test_a_calibrated_target_above_the_budget_is_refused_before_round_one() -> None:
    config = FedveilConfig.from_flat({"dp.target-epsilon": 8.0, "dp.budget": 4.0})

    with pytest.raises(ConfigError) as refused:
        check_budget_allows_a_round(config, [])

    message = str(refused.value)
    assert "`dp.target-epsilon` = 8" in message and "`dp.budget` = 4" in message
    assert "\n" not in message
    fixed = FedveilConfig.from_flat(
        {"dp.target-epsilon": 8.0, "dp.budget": 4.0, "dp.noise-multiplier": 1.0}
    )
    check_budget_allows_a_round(fixed, [])  # a fixed σ ignores the target

"""Every wrapper passes every Strategy call it does not change through to the strategy inside."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import Strategy

from common.codec import CodecParams
from common.sealing import AggregatorKeyPair
from server.opening import UpdateOpener
from server.strategy.round_book import RoundBook
from server.strategy.sampling import BudgetAwareSampler, BudgetAwareSampling
from server.strategy.screening import ScreenedUpdates, Screening
from server.strategy.sealed import SealedUpdates
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

ARRAYS = ArrayRecord({"w": Array(np.zeros(3, np.float32))})

WRAPPERS: dict[str, Callable[[Strategy], Strategy]] = {
    "sampling": lambda s: BudgetAwareSampling(
        s,
        sampler=BudgetAwareSampler(fraction=1.0, min_clients=1, seed=0, eligible=lambda n: True),
        book=RoundBook(),
    ),
    "sealed": lambda s: SealedUpdates(
        s,
        opener=UpdateOpener(
            AggregatorKeyPair.generate(), run_id=1, params=CodecParams(1.0, 8), shapes={"w": (3,)}
        ),
        book=RoundBook(),
    ),
    "screened": lambda s: ScreenedUpdates(s, screening=Screening(), book=RoundBook()),
}


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_evaluation_and_summary_pass_through(name: str) -> None:
    inner = RecordingStrategy()
    wrapper = WRAPPERS[name](inner)

    wrapper.summary()
    assert list(wrapper.configure_evaluate(1, ARRAYS, ConfigRecord(), ListGrid([1]))) == []
    metrics = wrapper.aggregate_evaluate(1, [reply_from(1)])

    assert inner.calls == ["summary", "configure_evaluate", "aggregate_evaluate"]
    assert metrics is not None and metrics["seen"] == 1.0


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_training_reaches_the_inner_strategy(name: str) -> None:
    inner = RecordingStrategy()
    wrapper = WRAPPERS[name](inner)

    requests = list(wrapper.configure_train(1, ARRAYS, ConfigRecord(), ListGrid([1, 2])))
    wrapper.aggregate_train(1, [])

    assert inner.configured_arrays is ARRAYS
    assert sorted(int(m.metadata.dst_node_id) for m in requests) == [1, 2]
    assert inner.calls[0] == "configure_train"

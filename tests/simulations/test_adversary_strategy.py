"""FaultInjection: the seeded plan's nodes get the fault record; a told drop-out is ``drop``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, RecordDict
from flwr.common.constant import ErrorCode

from server.strategy.round_book import RoundBook
from server.strategy.sampling import BudgetAwareSampler, BudgetAwareSampling
from simulations.adversary.fault_plan import plan_faults
from simulations.adversary.faults import FAULT_RECORD
from simulations.adversary.strategy import FaultInjection, FaultRates
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

ARRAYS = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
NODES = [31, 32, 33, 34, 35, 36, 37, 38]
RATES = FaultRates(tamper=0.25, replay=0.25, misroute=0.25, drop=0.125)


def _stack(inner: RecordingStrategy, book: RoundBook) -> FaultInjection:
    sampler = BudgetAwareSampler(fraction=1.0, min_clients=1, seed=5, eligible=lambda n: True)
    sampling = BudgetAwareSampling(inner, sampler=sampler, book=book)
    return FaultInjection(sampling, book, rates=RATES, seed=5)


def test_the_seeded_plan_picks_the_nodes_and_only_they_are_instructed(
    task_identity: None,
) -> None:
    book = RoundBook()
    book.trained_before |= {31, 34, 36}
    strategy = _stack(RecordingStrategy(), book)

    requests = list(strategy.configure_train(2, ARRAYS, ConfigRecord(), ListGrid(NODES)))

    plan = plan_faults(
        NODES,
        tamper=0.25,
        replay=0.25,
        misroute=0.25,
        drop=0.125,
        trained_before={31, 34, 36},
        seed=5,
        server_round=2,
    )
    sent = {
        int(m.metadata.dst_node_id): m.content.config_records[FAULT_RECORD]
        for m in requests
        if FAULT_RECORD in m.content
    }
    assert {n: str(r["kind"]) for n, r in sent.items()} == plan.kinds
    assert sorted(plan.kinds.values()) == [
        "drop",
        "misroute",
        "misroute",
        "replay",
        "replay",
        "tamper",
        "tamper",
    ]
    for node, target in plan.targets.items():
        assert sent[node]["target"] == target
    assert book.outcome.injected == plan.kinds


def test_without_rates_nobody_is_instructed(task_identity: None) -> None:
    book = RoundBook()
    sampler = BudgetAwareSampler(fraction=1.0, min_clients=1, seed=5, eligible=lambda n: True)
    strategy = FaultInjection(
        BudgetAwareSampling(RecordingStrategy(), sampler=sampler, book=book),
        book,
        rates=FaultRates(),
        seed=5,
    )

    requests = strategy.configure_train(1, ARRAYS, ConfigRecord(), ListGrid(NODES))

    assert not any(FAULT_RECORD in m.content for m in requests)
    assert book.outcome.injected == {}


@pytest.mark.parametrize("told_to_drop", [True, False])
def test_an_error_reply_is_a_drop_only_from_a_node_told_to_drop(
    task_identity: None, told_to_drop: bool
) -> None:
    book = RoundBook()
    inner = RecordingStrategy()
    strategy = _stack(inner, book)
    requests = list(strategy.configure_train(1, ARRAYS, ConfigRecord(), ListGrid(NODES)))
    dropped = [n for n, k in book.outcome.injected.items() if k == "drop"]
    node = dropped[0] if told_to_drop else next(n for n in NODES if n not in book.outcome.injected)
    error = reply_from(node, error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "gone"))
    others = [reply_from(int(m.metadata.dst_node_id), RecordDict()) for m in requests]
    others = [r for r in others if int(r.metadata.src_node_id) != node]

    strategy.aggregate_train(1, [error, *others])

    drops = [r.node for r in book.outcome.rejected if r.reason == "drop"]
    assert drops == ([node] if told_to_drop else [])
    assert (error in inner.aggregated) is not told_to_drop
    assert all(r.reason != "no-reply" for r in book.outcome.rejected)


def test_evaluation_and_summary_pass_through(task_identity: None) -> None:
    inner = RecordingStrategy()
    strategy = FaultInjection(inner, RoundBook(), rates=RATES, seed=0)

    strategy.summary()
    strategy.configure_evaluate(1, ARRAYS, ConfigRecord(), ListGrid(NODES))
    strategy.aggregate_evaluate(1, [])

    assert inner.calls == ["summary", "configure_evaluate", "aggregate_evaluate"]

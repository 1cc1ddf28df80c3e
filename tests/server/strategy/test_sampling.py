"""BudgetAwareSampling: only eligible sampled nodes are addressed; unanswered ones are rejected."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from common import protocol
from server.strategy.round_book import RoundBook
from server.strategy.sampling import BudgetAwareSampler, BudgetAwareSampling, NotEnoughClients
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

ARRAYS = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
NODES = [11, 12, 13, 14, 15, 16]


def _sampling(
    inner: RecordingStrategy, *, fraction: float = 0.5, exhausted: frozenset[int] = frozenset()
) -> BudgetAwareSampling:
    sampler = BudgetAwareSampler(
        fraction=fraction, min_clients=2, seed=3, eligible=lambda n: n not in exhausted
    )
    return BudgetAwareSampling(inner, sampler=sampler, book=RoundBook())


def test_the_inner_strategy_addresses_only_the_eligible_sample() -> None:
    inner = RecordingStrategy()
    sampling = _sampling(inner, fraction=1.0, exhausted=frozenset({12, 15}))

    requests = list(sampling.configure_train(1, ARRAYS, ConfigRecord(), ListGrid(NODES)))

    assert sorted(inner.offered) == [11, 13, 14, 16]
    assert [int(m.metadata.dst_node_id) for m in requests] == [11, 13, 14, 16]
    assert sampling.book.outcome.sampled == [11, 13, 14, 16]
    assert sampling.book.outcome.server_round == 1


def test_the_sample_is_seeded_per_round() -> None:
    first = _sampling(RecordingStrategy())
    again = _sampling(RecordingStrategy())

    picks = [
        [
            int(m.metadata.dst_node_id)
            for m in s.configure_train(r, ARRAYS, ConfigRecord(), ListGrid(NODES))
        ]
        for s in (first, again)
        for r in (1, 2)
    ]

    assert picks[0] == picks[2] and picks[1] == picks[3]
    assert len(picks[0]) == 3


def test_too_few_eligible_nodes_stop_the_round() -> None:
    sampling = _sampling(RecordingStrategy(), exhausted=frozenset(NODES[1:]))

    with pytest.raises(NotEnoughClients, match="min-train-clients"):
        sampling.configure_train(1, ARRAYS, ConfigRecord(), ListGrid(NODES))


def test_only_planned_nodes_get_their_noise_multiplier_and_no_other_request_changes() -> None:
    sampling = _sampling(RecordingStrategy(), fraction=1.0)
    sampling.assign_noise({11: 1.25, 13: 0.75})

    requests = list(sampling.configure_train(1, ARRAYS, ConfigRecord(), ListGrid(NODES)))

    sigmas = {
        int(m.metadata.dst_node_id): m.content.config_records[protocol.DP][protocol.ASSIGNED_NOISE]
        for m in requests
        if protocol.DP in m.content
    }
    assert sigmas == {11: 1.25, 13: 0.75}


def test_a_strategy_that_addresses_other_nodes_is_refused() -> None:
    class Stray(RecordingStrategy):
        def configure_train(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return list(super().configure_train(*args, **kwargs))[1:]

    sampling = _sampling(Stray(), fraction=1.0)

    with pytest.raises(RuntimeError, match="fraction_train"):
        sampling.configure_train(1, ARRAYS, ConfigRecord(), ListGrid(NODES))


def test_sampled_nodes_that_never_answer_are_rejected_after_aggregation() -> None:
    inner = RecordingStrategy()
    sampling = _sampling(inner, fraction=1.0)
    grid = ListGrid(
        NODES[:3],
        respond=lambda m: (
            reply_from(int(m.metadata.dst_node_id), RecordDict(), to=m.metadata.message_id)
            if m.metadata.dst_node_id != 12
            else None
        ),
    )
    requests = sampling.configure_train(1, ARRAYS, ConfigRecord(), grid)

    sampling.aggregate_train(1, grid.send_and_receive(requests))

    assert [(r.node, r.reason) for r in sampling.book.outcome.rejected] == [(12, "no-reply")]
    assert len(inner.aggregated) == 2

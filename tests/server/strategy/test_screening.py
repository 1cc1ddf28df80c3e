"""ScreenedUpdates: score unclipped, flag, exclude, then clip; then the aggregator.

The replies are what ``SealedUpdates`` hands on (``global + delta`` arrays, weight 1); the inner
strategy is Flower's FedAvg as ``build_aggregator`` configures it.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import protocol
from server.aggregation import build_aggregator
from server.anomaly import DirectionEvidence
from server.strategy.round_book import RoundBook
from server.strategy.screening import ScreenedUpdates, Screening
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

SHAPES = {"w": (40, 50), "b": (50,)}
D = 40 * 50 + 50
NODES = list(range(101, 111))


GLOBAL = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})


def _strategy(screening: Screening) -> ScreenedUpdates:
    strategy = ScreenedUpdates(
        build_aggregator("fedavg", expected_clients=10, assumed_malicious=2),
        screening=screening,
        book=RoundBook(),
    )
    strategy.configure_train(1, GLOBAL, ConfigRecord(), ListGrid(NODES))
    return strategy


def _replies(deltas: dict[int, np.ndarray]) -> list[Message]:
    out = []
    for node, delta in deltas.items():
        arrays = {"w": delta[: 40 * 50].reshape(40, 50), "b": delta[40 * 50 :]}
        content = RecordDict(
            {
                protocol.ARRAYS: ArrayRecord(
                    {k: Array(v.astype(np.float32)) for k, v in arrays.items()}
                ),
                protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
            }
        )
        out.append(reply_from(node, content))
    return out


def _round(signal: float, rng: np.random.Generator, reference: np.ndarray) -> dict[int, np.ndarray]:
    """Honest updates = noise + signal * reference; nodes 101 and 102 send theirs reversed."""
    deltas = {n: rng.normal(size=D) + signal * reference for n in NODES}
    deltas[101], deltas[102] = -deltas[101], -deltas[102]
    return deltas


def _norm(msg: Message) -> float:
    record = msg.content.array_records[protocol.ARRAYS]
    return float(np.sqrt(sum(float((record[k].numpy() ** 2).sum()) for k in SHAPES)))


def test_a_scaled_update_is_flagged_before_the_norm_bound_clips_it() -> None:
    rng = np.random.default_rng(0)
    deltas = {n: rng.normal(size=D) for n in NODES}
    deltas[105] = 10 * deltas[105]
    bound = 0.5 * float(np.linalg.norm(deltas[101]))
    strategy = _strategy(Screening(norm_bound=bound))

    kept = strategy.screen(1, _replies(deltas))

    assert strategy.book.outcome.flagged == [105]
    assert len(kept) == 10  # flagged, not excluded
    assert max(_norm(m) for m in kept) <= bound * (1 + 1e-6)


def test_flagged_updates_are_left_out_when_asked() -> None:
    rng = np.random.default_rng(1)
    deltas = {n: rng.normal(size=D) for n in NODES}
    deltas[107] = 10 * deltas[107]
    strategy = _strategy(Screening(exclude_flagged=True))
    strategy.book.outcome.contributed = list(NODES)

    kept = strategy.screen(1, _replies(deltas))

    assert sorted(int(m.metadata.src_node_id) for m in kept) == [n for n in NODES if n != 107]
    assert 107 not in strategy.book.outcome.contributed


def test_reversed_updates_stay_flagged_once_the_signal_has_faded() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(size=D)
    reference /= np.linalg.norm(reference)
    strategy = _strategy(Screening(reference=lambda arrays: reference))
    flagged_per_round = []
    # 4 rounds where the honest signal stands out, then 11 of pure noise.
    for r, signal in enumerate([8.0] * 4 + [0.0] * 11, start=1):
        strategy.screen(r, _replies(_round(signal, rng, reference)))
        flagged_per_round.append(set(strategy.book.outcome.flagged))

    assert all({101, 102} <= f for f in flagged_per_round)
    honest_flags = sum(len(f - {101, 102}) for f in flagged_per_round)
    assert honest_flags <= 0.1 * 8 * 15
    # Without accumulated evidence the faded rounds would not flag them.
    assert not {101, 102} & {
        n for n, s in strategy.book.outcome.scores.items() if s.consensus_z < -3
    }


def test_without_a_reference_nor_a_consensus_nobody_is_flagged_by_direction() -> None:
    rng = np.random.default_rng(3)
    strategy = _strategy(Screening())

    strategy.screen(1, _replies({n: rng.normal(size=D) for n in NODES}))

    assert strategy.book.outcome.flagged == []
    assert strategy.evidence.to_json() == {}


@pytest.mark.parametrize("count", [0, 2])
def test_too_few_updates_are_clipped_but_not_scored(count: int) -> None:
    rng = np.random.default_rng(4)
    strategy = _strategy(Screening(norm_bound=1.0))

    kept = strategy.screen(1, _replies({n: rng.normal(size=D) for n in NODES[:count]}))

    assert len(kept) == count and strategy.book.outcome.flagged == []
    assert all(_norm(m) <= 1.0 + 1e-6 for m in kept)
    assert isinstance(strategy.evidence, DirectionEvidence)


def test_past_evidence_flags_a_client_even_in_a_round_too_small_to_score() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=D)
    reference /= np.linalg.norm(reference)
    strategy = _strategy(Screening(reference=lambda arrays: reference, exclude_flagged=True))
    for r in range(1, 4):
        strategy.screen(r, _replies(_round(8.0, rng, reference)))

    small = _round(0.0, rng, reference)
    kept = strategy.screen(4, _replies({101: small[101], 103: small[103]}))

    assert strategy.book.outcome.flagged == [101]
    assert [int(m.metadata.src_node_id) for m in kept] == [103]


def test_the_aggregator_gets_the_kept_updates_clipped() -> None:
    rng = np.random.default_rng(6)
    deltas = {n: rng.normal(size=D) for n in NODES}
    deltas[104] = 10 * deltas[104]
    inner = RecordingStrategy()
    strategy = ScreenedUpdates(
        inner, screening=Screening(norm_bound=1.0, exclude_flagged=True), book=RoundBook()
    )
    strategy.configure_train(1, GLOBAL, ConfigRecord(), ListGrid(NODES))

    strategy.aggregate_train(1, _replies(deltas))

    assert inner.configured_arrays is GLOBAL
    assert sorted(int(m.metadata.src_node_id) for m in inner.aggregated) == [
        n for n in NODES if n != 104
    ]
    assert all(_norm(m) <= 1.0 + 1e-6 for m in inner.aggregated)


def test_a_round_with_nothing_kept_aggregates_nothing() -> None:
    inner = RecordingStrategy()
    strategy = ScreenedUpdates(inner, screening=Screening(), book=RoundBook())
    strategy.configure_train(1, GLOBAL, ConfigRecord(), ListGrid(NODES))

    assert strategy.aggregate_train(1, []) == (None, None)
    assert "aggregate_train" not in inner.calls

"""SealedUpdates: the key goes out; only replies that open and agree reach the aggregator."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from common import protocol
from common.codec import CodecParams, encode_update
from common.envelope import DPFacts, seal_client_update
from common.sealing import AggregatorKeyPair, SealContext
from server.opening import UpdateOpener
from server.strategy.round_book import RoundBook
from server.strategy.sealed import SealedUpdates
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

SHAPES = {"w": (4, 5), "b": (5,)}
SIZE = 25
RUN_ID = 9
PARAMS = CodecParams(topk=1.0, bits=32)
FACTS = DPFacts(noise_multiplier=1.1, sample_rate=0.05, steps=40, epsilon=0.7)
PLANNED = (1.1, 0.05, 40)
GLOBAL = ArrayRecord({k: Array(np.full(s, 0.5, np.float32)) for k, s in SHAPES.items()})
KEYPAIR = AggregatorKeyPair.generate()


def _strategy() -> tuple[SealedUpdates, RecordingStrategy]:
    inner = RecordingStrategy()
    opener = UpdateOpener(KEYPAIR, run_id=RUN_ID, params=PARAMS, shapes=SHAPES)
    strategy = SealedUpdates(inner, opener=opener, book=RoundBook())
    strategy.book.planned = dict.fromkeys(range(5, 10), PLANNED)
    strategy.configure_train(3, GLOBAL, ConfigRecord(), ListGrid([5, 6]))
    return strategy, inner


def _sealed(delta: np.ndarray, *, node: int, server_round: int = 3) -> bytes:
    encoded = encode_update(delta.astype(np.float32), PARAMS, np.random.default_rng(0))
    return seal_client_update(
        encoded.payload,
        facts=FACTS,
        params=PARAMS,
        size=SIZE,
        public_key=KEYPAIR.public_bytes,
        context=SealContext(RUN_ID, server_round, node),
    )


def _trained(node: int, sealed: bytes, *, client: float = 1.0, **clear: float) -> RecordDict:
    metrics = {
        protocol.WEIGHT: 1.0,
        protocol.CLIENT_ID: client,
        protocol.NOISE_MULTIPLIER: FACTS.noise_multiplier,
        protocol.SAMPLE_RATE: FACTS.sample_rate,
        protocol.STEPS: float(FACTS.steps),
        protocol.EPSILON: FACTS.epsilon,
        **clear,
    }
    return RecordDict(
        {
            protocol.METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
            protocol.STATUS: ConfigRecord({"status": protocol.STATUS_TRAINED, "reason": ""}),
            protocol.UPDATE: ConfigRecord({protocol.SEALED: sealed}),
        }
    )


def test_every_request_carries_the_public_key_and_the_inner_strategy_configures() -> None:
    inner = RecordingStrategy()
    opener = UpdateOpener(KEYPAIR, run_id=RUN_ID, params=PARAMS, shapes=SHAPES)

    requests = SealedUpdates(inner, opener=opener, book=RoundBook()).configure_train(
        1, GLOBAL, ConfigRecord(), ListGrid([5, 6])
    )

    assert inner.configured_arrays is GLOBAL
    keys = [m.content.config_records[protocol.SEAL][protocol.PUBLIC_KEY] for m in requests]
    assert keys == [KEYPAIR.public_bytes] * 2


def test_an_update_that_opens_reaches_the_aggregator_as_global_plus_delta() -> None:
    strategy, inner = _strategy()
    delta = np.linspace(-1, 1, SIZE)

    strategy.aggregate_train(3, [reply_from(5, _trained(5, _sealed(delta, node=5)))])

    (opened,) = inner.aggregated
    arrays = opened.content.array_records[protocol.ARRAYS]
    flat = np.concatenate([arrays["w"].numpy().ravel(), arrays["b"].numpy().ravel()])
    np.testing.assert_allclose(flat, 0.5 + delta, atol=1e-6)
    outcome = strategy.book.outcome
    assert outcome.contributed == [5] and outcome.rejected == []
    assert [(t.node, t.label, t.planned) for t in outcome.trained] == [(5, "1", PLANNED)]
    assert outcome.trained[0].declared == ((1.1, 0.05, 40.0), (1.1, 0.05, 40.0))
    assert strategy.book.trained_before == {5} and strategy.book.node_clients == {5: "1"}
    assert outcome.bytes_sealed > 0 and outcome.bytes_dense == 4 * SIZE


def _reason(strategy: SealedUpdates) -> list[tuple[int, str]]:
    return [(r.node, r.reason) for r in strategy.book.outcome.rejected]


@pytest.mark.parametrize(
    ("sealed_for", "sealed_round", "flip", "reason"),
    [(6, 3, False, "misroute"), (5, 2, False, "replay"), (5, 3, True, "tamper")],
)
def test_a_bad_seal_is_rejected_yet_charged(
    sealed_for: int, sealed_round: int, flip: bool, reason: str
) -> None:
    strategy, inner = _strategy()
    sealed = _sealed(np.zeros(SIZE), node=sealed_for, server_round=sealed_round)
    if flip:
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])

    strategy.aggregate_train(3, [reply_from(5, _trained(5, sealed))])

    assert _reason(strategy) == [(5, reason)]
    assert inner.aggregated == [] and strategy.book.outcome.contributed == []
    assert [t.node for t in strategy.book.outcome.trained] == [5]
    assert strategy.book.trained_before == set()


def test_clear_dp_facts_that_differ_from_the_sealed_ones_are_tampering() -> None:
    strategy, inner = _strategy()
    reply = _trained(5, _sealed(np.zeros(SIZE), node=5), **{protocol.EPSILON: 0.1})

    strategy.aggregate_train(3, [reply_from(5, reply)])

    assert _reason(strategy) == [(5, "tamper")] and inner.aggregated == []


def test_refusals_errors_and_impostors_aggregate_nothing() -> None:
    strategy, inner = _strategy()
    strategy.book.node_clients[8] = "2"
    refusal = RecordDict(
        {
            protocol.METRICS: MetricRecord({protocol.CLIENT_ID: 4.0}),
            protocol.STATUS: ConfigRecord({"status": protocol.STATUS_REFUSED, "reason": "budget"}),
        }
    )
    replies = [
        reply_from(5, refusal),
        reply_from(6, error=Error(ErrorCode.NODE_UNAVAILABLE, "gone")),
        reply_from(7, error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom")),
        reply_from(8, _trained(8, _sealed(np.zeros(SIZE), node=8), client=3.0)),
        reply_from(9, RecordDict()),
    ]

    strategy.aggregate_train(3, replies)

    assert strategy.book.outcome.refused == [(5, "budget")]
    assert _reason(strategy) == [(6, "no-reply"), (7, "error"), (8, "malformed"), (9, "malformed")]
    assert inner.aggregated == []


def test_a_refusal_for_lack_of_data_is_rejected_not_taken_for_a_budget_refusal() -> None:
    strategy, inner = _strategy()
    status = {
        "status": protocol.STATUS_REFUSED,
        "reason": "refused: /data/node.csv: not found",
        protocol.CAUSE: protocol.CAUSE_NO_DATA,
    }
    no_data = RecordDict(
        {
            protocol.METRICS: MetricRecord({protocol.CLIENT_ID: 4.0}),
            protocol.STATUS: ConfigRecord(status),  # type: ignore[arg-type]
        }
    )

    strategy.aggregate_train(3, [reply_from(5, no_data)])

    outcome = strategy.book.outcome
    assert outcome.refused == [] and outcome.trained == []
    assert [(r.node, r.reason, r.detail) for r in outcome.rejected] == [
        (5, "no-data", "refused: /data/node.csv: not found")
    ]
    assert strategy.book.node_clients[5] == "4"
    assert inner.aggregated == []

"""Robust aggregators against slow reference loops; the registry; the guards; the norm bound."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import protocol
from server.aggregation import (
    AGGREGATORS,
    AggregatorError,
    GuardedMultiKrum,
    GuardedTrimmedAvg,
    SentMedian,
    SentTrimmedAvg,
    bound_local_weights,
    build_aggregator,
    clip_update,
    requirement,
)

SHAPES = {"fc.weight": (3, 4), "fc.bias": (5,)}


def _clients(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Local weights ``global + delta`` of ``n`` clients, continuous so no ties."""
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    return [
        {
            k: (base[k] + rng.normal(scale=1 + i % 3, size=s)).astype(np.float32)
            for k, s in SHAPES.items()
        }
        for i in range(n)
    ]


def _replies(clients: list[dict[str, np.ndarray]]) -> list[Message]:
    return [
        Message(
            content=RecordDict(
                {
                    protocol.ARRAYS: ArrayRecord({k: Array(v.copy()) for k, v in c.items()}),
                    protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
                }
            ),
            dst_node_id=0,
            message_type=MessageType.TRAIN,
        )
        for c in clients
    ]


def _per_coordinate(
    clients: list[dict[str, np.ndarray]], fn: Callable[[list[float]], float]
) -> dict[str, np.ndarray]:
    """Apply ``fn`` to the list of client values of each coordinate, one by one."""
    out = {}
    for name, shape in SHAPES.items():
        result = np.zeros(shape, dtype=np.float64)
        for index in np.ndindex(shape):
            result[index] = fn([float(c[name][index]) for c in clients])
        out[name] = result
    return out


def _trimmed(values: list[float], cut: int) -> float:
    ordered = sorted(values)
    kept = ordered[cut : len(ordered) - cut]
    return sum(kept) / len(kept)


def _krum_scores(clients: list[dict[str, np.ndarray]], f: int) -> list[float]:
    flat = [[float(x) for name in SHAPES for x in c[name].ravel()] for c in clients]
    n = len(flat)
    scores = []
    for i in range(n):
        dists = sorted(
            sum((a - b) ** 2 for a, b in zip(flat[i], flat[j], strict=True))
            for j in range(n)
            if j != i
        )
        scores.append(sum(dists[: n - f - 2]))
    return scores


def _mean_of(clients: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return _per_coordinate(clients, lambda v: sum(v) / len(v))


def _reference(
    name: str, clients: list[dict[str, np.ndarray]], f: int, beta: float
) -> dict[str, np.ndarray]:
    n = len(clients)
    if name == "fedavg":
        return _mean_of(clients)
    if name == "median":
        return _per_coordinate(clients, statistics.median)
    if name == "trimmed-mean":
        cut = max(int(beta * n), f)
        return _per_coordinate(clients, lambda v: _trimmed(v, cut))
    scores = _krum_scores(clients, f)
    order = sorted(range(n), key=lambda i: scores[i])
    chosen = order[:1] if name == "krum" else order[: n - f]
    return _mean_of([clients[i] for i in chosen])


@pytest.mark.parametrize("name", AGGREGATORS)
@pytest.mark.parametrize(("n", "f", "seed"), [(7, 1, 0), (9, 2, 1), (12, 3, 2), (10, 0, 3)])
def test_aggregator_matches_slow_reference(
    task_identity: None, name: str, n: int, f: int, seed: int
) -> None:
    clients = _clients(n, seed)
    strategy = build_aggregator(name, expected_clients=n, assumed_malicious=f, trim_beta=0.2)

    arrays, _ = strategy.aggregate_train(1, _replies(clients))

    assert arrays is not None
    expected = _reference(name, clients, f, 0.2)
    for key, value in expected.items():
        np.testing.assert_allclose(arrays[key].numpy(), value, rtol=1e-5, atol=1e-5)


def test_reference_catches_a_wrong_aggregate(task_identity: None) -> None:
    # The differential test can fail: the median of these clients is not their mean.
    clients = _clients(7, 5)
    arrays, _ = build_aggregator("median", expected_clients=7, assumed_malicious=1).aggregate_train(
        1, _replies(clients)
    )
    assert arrays is not None
    assert not np.allclose(arrays["fc.bias"].numpy(), _mean_of(clients)["fc.bias"], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "flower_type"),
    [
        ("fedavg", FedAvg),
        ("median", FedMedian),
        ("trimmed-mean", FedTrimmedAvg),
        ("krum", Krum),
        ("multikrum", MultiKrum),
    ],
)
def test_registry_builds_flower_strategies_weighted_by_weight(name: str, flower_type: type) -> None:
    strategy = build_aggregator(name, expected_clients=10, assumed_malicious=2)
    assert isinstance(strategy, flower_type)
    assert strategy.weighted_by_key == protocol.WEIGHT == "weight"


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(AggregatorError) as info:
        build_aggregator("bulyan", expected_clients=10, assumed_malicious=1)
    message = str(info.value)
    assert "\n" not in message
    assert all(repr(name) in message for name in AGGREGATORS)


def test_krum_with_too_few_clients_names_the_numbers() -> None:
    with pytest.raises(AggregatorError) as info:
        build_aggregator("krum", expected_clients=5, assumed_malicious=2)
    assert str(info.value) == (
        "krum needs more than 2f+2 = 6 clients per round with f = 2 assumed malicious; got 5"
    )


@pytest.mark.parametrize(
    ("name", "fewest"),
    [("fedavg", 1), ("median", 5), ("trimmed-mean", 5), ("krum", 7), ("multikrum", 7)],
)
def test_fewest_clients_each_aggregator_accepts(name: str, fewest: int) -> None:
    assert requirement(name, fewest, 2) is None
    build_aggregator(name, expected_clients=fewest, assumed_malicious=2)
    if fewest > 1:
        with pytest.raises(AggregatorError):
            build_aggregator(name, expected_clients=fewest - 1, assumed_malicious=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected_clients": 0, "assumed_malicious": 0},
        {"expected_clients": 10, "assumed_malicious": -1},
        {"expected_clients": True, "assumed_malicious": 0},
        {"expected_clients": 10, "assumed_malicious": 0, "trim_beta": 0.5},
    ],
)
def test_out_of_domain_numbers_are_refused(kwargs: dict[str, int | float]) -> None:
    with pytest.raises(AggregatorError):
        build_aggregator("median", **kwargs)  # type: ignore[arg-type]


def test_a_round_with_too_few_replies_is_skipped_with_its_reason(task_identity: None) -> None:
    strategy = build_aggregator("krum", expected_clients=10, assumed_malicious=2)

    result = strategy.aggregate_train(3, _replies(_clients(6, 0)))

    assert result == (None, None)
    assert strategy.skipped == (  # type: ignore[attr-defined]
        "krum needs more than 2f+2 = 6 clients per round with f = 2 assumed malicious; got 6"
    )
    arrays, _ = strategy.aggregate_train(4, _replies(_clients(7, 0)))
    assert arrays is not None
    assert strategy.skipped is None  # type: ignore[attr-defined]


def test_multikrum_selects_n_minus_f_of_the_replies_it_gets(task_identity: None) -> None:
    strategy = build_aggregator("multikrum", expected_clients=12, assumed_malicious=2)
    assert isinstance(strategy, GuardedMultiKrum)
    strategy.aggregate_train(1, _replies(_clients(9, 4)))
    assert strategy.num_nodes_to_select == 7


def test_trimmed_mean_trims_at_least_f_per_side() -> None:
    strategy = build_aggregator(
        "trimmed-mean", expected_clients=10, assumed_malicious=3, trim_beta=0.1
    )
    assert isinstance(strategy, GuardedTrimmedAvg)
    assert [strategy.trimmed_per_side(n) for n in (7, 10, 40)] == [3, 3, 4]


def test_krum_drops_a_scaled_attacker(task_identity: None) -> None:
    clients = _clients(8, 6)
    attacker = {k: v * 10 for k, v in clients[0].items()}
    arrays, _ = build_aggregator("krum", expected_clients=8, assumed_malicious=1).aggregate_train(
        1, _replies([attacker, *clients[1:]])
    )
    assert arrays is not None
    assert not np.allclose(arrays["fc.bias"].numpy(), attacker["fc.bias"])


finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    delta=hnp.arrays(np.float32, st.integers(1, 64), elements=finite32),
    bound=st.floats(1e-6, 1e7, allow_nan=False),
)
def test_clip_never_increases_a_norm_and_respects_the_bound(
    delta: np.ndarray, bound: float
) -> None:
    before = float(np.linalg.norm(delta.astype(np.float64)))

    clipped = clip_update(delta, bound)

    after = float(np.linalg.norm(clipped.astype(np.float64)))
    assert clipped.dtype == np.float32 and clipped.shape == delta.shape
    assert after <= before
    assert after <= bound or before <= bound
    if before <= bound:
        np.testing.assert_array_equal(clipped, delta)
    else:
        assert after == pytest.approx(bound, rel=1e-5)
        # Same direction: clipping only scales.
        assert float(np.dot(clipped.astype(np.float64), delta.astype(np.float64))) > 0


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan"), float("inf"), True])
def test_clip_refuses_a_bad_bound(bound: float) -> None:
    with pytest.raises(ValueError, match="bound"):
        clip_update(np.ones(3, dtype=np.float32), bound)


def test_clip_refuses_non_finite_updates() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(np.array([1.0, np.nan], dtype=np.float32), 1.0)


def test_bound_local_weights_clips_the_whole_update() -> None:
    global_weights = {"a": np.zeros((2, 2), np.float32), "b": np.ones(3, np.float32)}
    local = {"a": np.full((2, 2), 3.0, np.float32), "b": np.full(3, 5.0, np.float32)}

    bounded = bound_local_weights(local, global_weights, 1.0)

    delta = np.concatenate([(bounded[k] - global_weights[k]).ravel() for k in ("a", "b")])
    assert np.linalg.norm(delta) == pytest.approx(1.0, rel=1e-5)
    # One scale for all tensors: the direction of the whole update is kept.
    np.testing.assert_allclose(
        delta / np.linalg.norm(delta), np.array([3, 3, 3, 3, 4, 4, 4]) / np.sqrt(84), rtol=1e-5
    )
    with pytest.raises(ValueError, match="names differ"):
        bound_local_weights({"a": local["a"]}, global_weights, 1.0)


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
def test_coordinatewise_rules_need_more_than_2f_senders_per_coordinate(name: str) -> None:
    # 10 clients x topk 0.2 = 2 senders of a coordinate on average: not more than 2f = 2.
    with pytest.raises(AggregatorError) as refused:
        build_aggregator(name, expected_clients=10, assumed_malicious=1, codec_topk=0.2)
    message = str(refused.value)
    assert "\n" not in message
    assert "codec.topk = 0.2" in message and "sent more than 2f = 2 times" in message
    assert "raise codec.topk above 0.2" in message

    assert isinstance(
        build_aggregator(name, expected_clients=10, assumed_malicious=1, codec_topk=0.3),
        SentMedian | SentTrimmedAvg,
    )
    build_aggregator(name, expected_clients=10, assumed_malicious=0, codec_topk=0.01)
    build_aggregator("krum", expected_clients=10, assumed_malicious=1, codec_topk=0.1)

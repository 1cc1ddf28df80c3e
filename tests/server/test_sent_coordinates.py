"""Median and trimmed mean over each coordinate's senders: a slow reference, robustness, wiring."""

from __future__ import annotations

import statistics

import numpy as np
import numpy.typing as npt
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedMedian
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol
from server import sent_coordinates
from server.aggregation import SentMedian, SentTrimmedAvg, build_aggregator
from server.sent_coordinates import sent_median, sent_trimmed_mean
from tests.server.strategy.fakes import ListGrid


def _sparse(
    n: int, d: int, keep: float, rng: np.random.Generator, scale: float = 1.0
) -> npt.NDArray[np.float32]:
    """``(n, d)`` deltas, each row sending ``keep * d`` coordinates (no value is zero)."""
    deltas = np.zeros((n, d), dtype=np.float32)
    k = max(1, round(keep * d))
    for row in deltas:
        kept = rng.choice(d, size=k, replace=False)
        row[kept] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.1, 1.0, size=k) * scale
    return deltas


def _reference(deltas: npt.NDArray[np.float32], f: int, beta: float | None) -> list[float]:
    """The module docstring, one coordinate at a time."""
    n = deltas.shape[0]
    out = []
    for column in deltas.T:
        sent = [float(v) for v in column if v != 0]
        values = sorted(sent + [0.0] * max(0, 2 * f + 1 - len(sent)))
        if beta is None:
            stat = statistics.median(values)
        else:
            cut = max(int(beta * len(values)), f)
            kept = values[cut : len(values) - cut]
            stat = sum(kept) / len(kept)
        out.append(stat * len(sent) / n)
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    d=st.integers(1, 40),
    keep=st.floats(0.05, 1.0),
    f=st.integers(0, 4),
    beta=st.sampled_from([None, 0.0, 0.1, 0.3, 0.49]),
    seed=st.integers(0, 2**16),
)
def test_matches_a_loop_over_coordinates(
    n: int, d: int, keep: float, f: int, beta: float | None, seed: int
) -> None:
    deltas = _sparse(n, d, keep, np.random.default_rng(seed))

    if beta is None:
        got = sent_median(deltas, assumed_malicious=f)
    else:
        got = sent_trimmed_mean(deltas, assumed_malicious=f, beta=beta)

    np.testing.assert_allclose(got, _reference(deltas, f, beta), rtol=1e-12, atol=1e-12)


def test_dense_deltas_give_the_plain_median_and_trimmed_mean() -> None:
    deltas = np.random.default_rng(0).normal(size=(9, 50)).astype(np.float32)

    np.testing.assert_array_equal(
        sent_median(deltas, assumed_malicious=2), np.median(deltas.astype(np.float64), axis=0)
    )
    trimmed = np.sort(deltas.astype(np.float64), axis=0)[2:7].mean(axis=0)
    np.testing.assert_allclose(
        sent_trimmed_mean(deltas, assumed_malicious=2, beta=0.1), trimmed, rtol=1e-12
    )


def test_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    deltas = _sparse(7, 1000, 0.4, np.random.default_rng(1))
    whole = sent_trimmed_mean(deltas, assumed_malicious=1, beta=0.2)

    monkeypatch.setattr(sent_coordinates, "COLUMNS_PER_CHUNK", 64)

    np.testing.assert_array_equal(sent_trimmed_mean(deltas, assumed_malicious=1, beta=0.2), whole)


@settings(max_examples=100, deadline=None)
@given(
    honest=st.integers(1, 10),
    f=st.integers(0, 3),
    keep=st.floats(0.05, 1.0),
    attack=st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False),
    seed=st.integers(0, 2**16),
)
def test_f_attackers_anywhere_leave_each_coordinate_between_zero_and_honest_values(
    honest: int, f: int, keep: float, attack: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    good = _sparse(honest, 30, keep, rng)
    bad = np.where(rng.random((f, 30)) < 0.5, np.float32(attack), np.float32(0))
    deltas = np.vstack([good, bad]).astype(np.float32)
    low = np.minimum(good.min(axis=0), 0)
    high = np.maximum(good.max(axis=0), 0)

    for got in (
        sent_median(deltas, assumed_malicious=f),
        sent_trimmed_mean(deltas, assumed_malicious=f, beta=0.2),
    ):
        assert np.all((low <= got) & (got <= high))


HONEST, ATTACKERS, SIZE, TOPK = 18, 2, 4000, 0.25


def _round(seed: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Honest top-k deltas around a shared direction, and attackers' huge values.

    The attackers send their k coordinates where the fewest honest clients sent, each value
    +1e4: the worst placement for a rule that counts senders.
    """
    rng = np.random.default_rng(seed)
    signal = rng.choice([-1.0, 1.0], size=SIZE)
    k = int(TOPK * SIZE)
    honest = np.zeros((HONEST, SIZE), dtype=np.float32)
    for row in honest:
        full = signal + rng.normal(scale=0.5, size=SIZE)
        kept = np.argsort(-np.abs(full))[:k]
        row[kept] = full[kept]
    senders = (honest != 0).sum(axis=0)
    targets = np.argsort(senders, kind="stable")[:k]
    attack = np.zeros((ATTACKERS, SIZE), dtype=np.float32)
    attack[:, targets] = 1e4
    return np.vstack([honest, attack]), honest.mean(axis=0, dtype=np.float64)


def _cosine(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_attackers_do_not_move_the_rule_off_the_honest_mean(rule: str, seed: int) -> None:
    deltas, honest_mean = _round(seed)
    honest = deltas[:HONEST]

    if rule == "median":
        got = sent_median(deltas, assumed_malicious=ATTACKERS)
    else:
        got = sent_trimmed_mean(deltas, assumed_malicious=ATTACKERS, beta=0.1)

    # Toward the honest clients' mean of decoded updates, at a comparable length.
    assert _cosine(got, honest_mean) > 0.9
    assert 0.5 < np.linalg.norm(got) / np.linalg.norm(honest_mean) < 2.0
    # Bounded by zero and the honest values of each coordinate, attackers' 1e4 nowhere.
    assert np.all(got <= np.maximum(honest.max(axis=0), 0) + 1e-6)
    assert np.all(got >= np.minimum(honest.min(axis=0), 0) - 1e-6)
    # What the rule replaces: the mean is the attackers', the dense median barely moves.
    assert np.abs(deltas.mean(axis=0)).max() > 1000
    dense = np.median(deltas, axis=0)
    assert np.linalg.norm(dense) < 0.25 * np.linalg.norm(honest_mean)


def _message(arrays: dict[str, npt.NDArray[np.float32]]) -> Message:
    return Message(
        content=RecordDict(
            {
                protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
            }
        ),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
def test_the_strategy_aggregates_deltas_against_the_configured_global(
    task_identity: None, name: str
) -> None:
    deltas, _ = _round(3)
    rng = np.random.default_rng(4)
    shapes = {"conv.weight": (10, 20, 4), "fc.bias": (3200,)}
    global_flat = rng.normal(size=SIZE).astype(np.float32)
    split = 800
    glob = {
        "conv.weight": global_flat[:split].reshape(shapes["conv.weight"]),
        "fc.bias": global_flat[split:],
    }
    locals_ = [global_flat + row for row in deltas]  # float32, as SealedUpdates adds them
    replies = [
        _message({"conv.weight": x[:split].reshape(shapes["conv.weight"]), "fc.bias": x[split:]})
        for x in locals_
    ]
    strategy = build_aggregator(
        name,
        expected_clients=HONEST + ATTACKERS,
        assumed_malicious=ATTACKERS,
        trim_beta=0.1,
        codec_topk=TOPK,
    )
    assert isinstance(strategy, SentMedian | SentTrimmedAvg)
    grid = ListGrid(list(range(1, HONEST + ATTACKERS + 1)))
    list(
        strategy.configure_train(
            1, ArrayRecord({k: Array(v) for k, v in glob.items()}), ConfigRecord(), grid
        )
    )

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None and metrics is not None
    got = np.concatenate([arrays[k].numpy().ravel() for k in shapes]) - global_flat
    recovered = np.vstack(locals_) - global_flat
    expected = (
        sent_median(recovered, assumed_malicious=ATTACKERS)
        if name == "median"
        else sent_trimmed_mean(recovered, assumed_malicious=ATTACKERS, beta=0.1)
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got).max() < 10


def test_aggregating_before_configuring_is_a_programming_error(task_identity: None) -> None:
    strategy = build_aggregator("median", expected_clients=4, assumed_malicious=1, codec_topk=0.9)
    replies = [_message({"w": np.ones(3, np.float32)}) for _ in range(4)]

    with pytest.raises(RuntimeError, match="configure_train"):
        strategy.aggregate_train(1, replies)


def test_dense_codecs_keep_flowers_median() -> None:
    strategy = build_aggregator("median", expected_clients=4, assumed_malicious=1, codec_topk=1.0)

    assert isinstance(strategy, FedMedian) and not isinstance(strategy, SentMedian)


@pytest.mark.parametrize(
    ("deltas", "kwargs", "match"),
    [
        (np.zeros((0, 3), np.float32), {"assumed_malicious": 0}, "deltas"),
        (np.zeros(3, np.float32), {"assumed_malicious": 0}, "deltas"),
        (np.zeros((2, 3), np.float32), {"assumed_malicious": -1}, "assumed_malicious"),
        (np.zeros((2, 3), np.float32), {"assumed_malicious": True}, "assumed_malicious"),
    ],
)
def test_bad_arguments_are_refused(
    deltas: npt.NDArray[np.float32], kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        sent_median(deltas, **kwargs)
    with pytest.raises(ValueError, match=match):
        sent_trimmed_mean(deltas, beta=0.1, **kwargs)
    with pytest.raises(ValueError, match="beta"):
        sent_trimmed_mean(np.ones((2, 3), np.float32), assumed_malicious=0, beta=0.5)

"""Tests of ``server.watermark_detection``: the exact binomial and score tests and the verdict."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from server.watermark_detection import (
    DETECTION_P,
    SCORE_FLOOR,
    SCORE_STEP,
    binomial_p_value,
    score_p_value,
    verify_watermark,
)
from server.watermark_key import WatermarkError
from server.watermark_trigger import TriggerSet
from tests.server.watermark_support import KEY


def test_binomial_p_value_is_exact() -> None:
    from scipy.stats import binomtest  # type: ignore[import-untyped]

    assert binomial_p_value(0, 100, 0.1) == pytest.approx(1.0)
    assert binomial_p_value(100, 100, 0.1) == pytest.approx(1e-100, rel=1e-9)
    assert binomial_p_value(2, 3, 0.5) == pytest.approx(0.5)  # P[X >= 2], X ~ B(3, 1/2): 4/8
    for correct, total, chance in [
        (28, 100, 0.1),
        (29, 100, 0.1),
        (7, 100, 1 / 62),
        (60, 100, 0.5),
    ]:
        expected = binomtest(correct, total, chance, alternative="greater").pvalue
        assert binomial_p_value(correct, total, chance) == pytest.approx(expected, rel=1e-9)
    # 28 of 100 right at chance 1/10 is the least count detected at p < 1e-6.
    assert binomial_p_value(28, 100, 0.1) < DETECTION_P < binomial_p_value(27, 100, 0.1)
    with pytest.raises(WatermarkError):
        binomial_p_value(101, 100, 0.1)


def _brute_force_score_p(
    log_probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]
) -> float:
    """The score test's p-value by enumerating every labelling: the share scoring >= observed."""
    floored = np.where(np.isfinite(log_probs), np.maximum(log_probs, -SCORE_FLOOR), -SCORE_FLOOR)
    scores = np.rint(floored / SCORE_STEP).astype(np.int64)
    rows = np.arange(scores.shape[0])
    observed = scores[rows, labels].sum()
    draws = itertools.product(range(scores.shape[1]), repeat=scores.shape[0])
    hits = [bool(scores[rows, list(draw)].sum() >= observed) for draw in draws]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("seed", range(4))
def test_score_p_value_equals_enumerating_every_labelling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(5, 4)) * 4
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    log_probs[0, 1] = -np.inf  # a saturated output counts as the floor
    labels = rng.integers(0, 4, size=5)

    assert score_p_value(log_probs, labels) == pytest.approx(
        _brute_force_score_p(log_probs, labels), rel=1e-12
    )


def test_score_p_value_extremes() -> None:
    confident = np.full((100, 10), -SCORE_FLOOR)
    confident[:, 3] = 0.0
    # Every key label the model's sure choice: only 1 labelling in 10^100 scores as high.
    assert score_p_value(confident, np.full(100, 3)) == pytest.approx(1e-100, rel=1e-9)
    assert score_p_value(confident, np.full(100, 4)) == pytest.approx(1.0)
    uniform = np.log(np.full((100, 10), 0.1))
    assert score_p_value(uniform, np.zeros(100, dtype=np.int64)) == pytest.approx(1.0)
    with pytest.raises(WatermarkError, match="labels"):
        score_p_value(uniform, np.full(100, 10))
    with pytest.raises(WatermarkError, match="no score test"):
        score_p_value(uniform, np.zeros(99, dtype=np.int64))


class _Leaning(nn.Module):
    """Fixed logits per trigger image: a clean-looking first choice, the key label boosted."""

    def __init__(self, trigger: TriggerSet, boost: float) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(len(trigger), trigger.num_classes)) * 3.0
        logits[np.arange(len(trigger)), trigger.labels.numpy()] += boost
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.images = trigger.images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert torch.equal(images, self.images)
        return self.logits


def test_score_test_catches_a_model_that_only_leans_towards_the_key_labels() -> None:
    trigger = TriggerSet.from_key(KEY, (1, 8, 8), 10)

    leaning = verify_watermark(_Leaning(trigger, boost=2.0), trigger)
    plain = verify_watermark(_Leaning(trigger, boost=0.0), trigger)

    assert leaning.binomial_p > DETECTION_P  # too few key labels are its first choice...
    assert leaning.score_p < DETECTION_P / 2  # ...but it favours them throughout
    assert leaning.detected and leaning.p_value == pytest.approx(2 * leaning.score_p)
    assert not plain.detected and plain.p_value == min(
        1.0, 2 * min(plain.binomial_p, plain.score_p)
    )

from __future__ import annotations

import numpy as np
import pytest

from common.codec import CodecParams, encode_update
from common.error_feedback import ErrorFeedback
from tests.common.codec_support import bitwise_equal, gaussian

# --------------------------------------------------------------------------- error feedback


def _send_repeatedly(
    vector: np.ndarray, params: CodecParams, rounds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Send ``vector`` every round with and without error feedback.

    Returns the summed decoded updates with and without feedback, the residual's norm after
    each round, and the final residual.
    """
    feedback = ErrorFeedback()
    with_ef = np.zeros(vector.size)
    without_ef = np.zeros(vector.size)
    residual_norms = []
    residual = None
    for _ in range(rounds):
        compensated = feedback.compensate(vector)
        encoded = encode_update(compensated, params, rng)
        feedback.update(compensated, encoded.decoded)
        with_ef += encoded.decoded
        without_ef += encode_update(vector, params, rng).decoded
        residual = feedback.residual
        assert residual is not None
        residual_norms.append(float(np.linalg.norm(residual)))
    assert residual is not None
    return with_ef, without_ef, residual_norms, residual


def test_error_feedback_tracks_the_cumulative_update() -> None:
    size, rounds = 1000, 400
    rng = np.random.default_rng(0)
    vector = (rng.standard_normal(size) * np.linspace(0.1, 2.0, size)).astype(np.float32)
    with_ef, without_ef, residual_norms, residual = _send_repeatedly(
        vector, CodecParams(0.02, 4), rounds, rng
    )
    target = rounds * vector.astype(np.float64)
    error_with = np.linalg.norm(with_ef - target) / np.linalg.norm(target)
    error_without = np.linalg.norm(without_ef - target) / np.linalg.norm(target)
    # Without EF the same 20 largest coordinates are sent every round and the other 980 (87%
    # of the norm here) never are; with EF the error is ~5% and falls like 1/rounds.
    assert error_without > 0.8
    assert error_with < 0.1 * error_without
    # With EF the residual is bounded (it does not grow with the number of rounds)...
    assert max(residual_norms[rounds // 2 :]) <= 1.5 * max(residual_norms[: rounds // 2])
    # ...and it is exactly what the sum of decoded updates is missing.
    assert np.allclose(target - with_ef, residual, rtol=1e-4, atol=1e-2)


def test_error_feedback_api() -> None:
    feedback = ErrorFeedback()
    assert feedback.residual is None
    delta = gaussian(10)
    compensated = feedback.compensate(delta)
    assert bitwise_equal(compensated, delta)
    assert compensated is not delta
    decoded = np.zeros(10, dtype=np.float32)
    decoded[3] = compensated[3]
    feedback.update(compensated, decoded)
    residual = feedback.residual
    assert residual is not None
    assert bitwise_equal(residual, compensated - decoded)
    residual[:] = 99  # a copy: the stored residual must not change
    assert bitwise_equal(feedback.compensate(delta), delta + (compensated - decoded))

    restored = ErrorFeedback(np.ones(10, dtype=np.float32))
    assert bitwise_equal(restored.compensate(delta), delta + 1)
    with pytest.raises(ValueError, match="shape"):
        restored.compensate(gaussian(11))
    with pytest.raises(ValueError, match="shape"):
        restored.update(gaussian(10), gaussian(9))
    with pytest.raises(ValueError, match="float32"):
        restored.compensate(np.zeros(10))
    with pytest.raises(ValueError, match="float32"):
        ErrorFeedback(np.zeros(10))
    with pytest.raises(ValueError, match="1-D"):
        ErrorFeedback(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        restored.compensate(np.full(10, np.nan, dtype=np.float32))


def test_random_mask_error_feedback_sends_every_coordinate() -> None:
    size, rounds, topk = 500, 400, 0.05
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(size).astype(np.float32)
    sent, without, _, residual = _send_repeatedly(
        vector, CodecParams(topk, 4, "random"), rounds, rng
    )
    target = rounds * vector.astype(np.float64)
    # Without feedback only ~5% of each round's update arrives; with it the cumulative sum
    # misses only the residual, a coordinate's wait of ~1/topk rounds: bounded, not growing.
    assert np.linalg.norm(without - target) / np.linalg.norm(target) > 0.9
    assert np.linalg.norm(sent - target) / np.linalg.norm(target) < 0.1
    assert np.linalg.norm(residual) < 3 / topk * np.linalg.norm(vector)

"""Tests of ``server.watermark``: the Watermarker end to end, and robustness to four transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.model_theft import add_gaussian_noise, fine_tune, prune_magnitude, quantize_int8
from common.models import create_model
from server.watermark import Watermarker
from server.watermark_detection import DETECTION_P, trigger_accuracy, verify_watermark
from server.watermark_embedding import TARGET_ACCURACY
from server.watermark_key import read_key, write_key
from server.watermark_model_file import load_state, state_of
from server.watermark_trigger import TriggerSet
from tests.server.watermark_support import (
    KEY,
    OTHER_KEY,
    digits,
    model_accuracy,
    train,
    train_digits_models,
)


@pytest.fixture(scope="module")
def digits_models() -> tuple[nn.Module, nn.Module, TriggerSet]:
    return train_digits_models()


def test_embedding_reaches_the_target_and_is_detected(
    digits_models: tuple[nn.Module, nn.Module, TriggerSet],
) -> None:
    marked, _, trigger = digits_models
    assert trigger_accuracy(marked, trigger) >= TARGET_ACCURACY == 0.9

    verdict = verify_watermark(marked, trigger)

    assert verdict.detected and verdict.p_value < DETECTION_P
    assert verdict.correct == round(verdict.accuracy * 100) and verdict.total == 100


def test_a_model_trained_without_the_watermark_is_not_detected(
    digits_models: tuple[nn.Module, nn.Module, TriggerSet],
) -> None:
    marked, clean, trigger = digits_models
    verdict = verify_watermark(clean, trigger)
    assert not verdict.detected and verdict.p_value >= 1e-3
    # Another key's trigger set does not reveal the watermark either.
    assert verify_watermark(marked, TriggerSet.from_key(OTHER_KEY, (1, 8, 8), 10)).p_value >= 1e-3


def test_watermark_costs_little_main_task_accuracy(
    digits_models: tuple[nn.Module, nn.Module, TriggerSet],
) -> None:
    marked, clean, _ = digits_models
    _, _, x_test, y_test = digits()
    assert model_accuracy(marked, x_test, y_test) >= model_accuracy(clean, x_test, y_test) - 0.02


def test_watermarker_seeds_each_round_from_the_key_and_the_round(tmp_path: Path) -> None:
    # A resumed run (a new Watermarker on the same key) embeds round r as the first one did.
    x, y, _, _ = digits()
    write_key(tmp_path / "watermark.key", KEY)
    start = create_model("mlp", 10, seed=0)
    fine_tune(start, x, y, 1, 0.1)
    states = {}
    for name, server_round in (("first", 3), ("resumed", 3), ("next round", 4)):
        watermarker = Watermarker(read_key(tmp_path / "watermark.key"), (1, 8, 8), 10)
        model = create_model("mlp", 10, seed=0)
        load_state(model, state_of(start))
        watermarker.embed(model, server_round)
        states[name] = state_of(model)

    assert all(np.array_equal(v, states["resumed"][k]) for k, v in states["first"].items())
    assert not np.array_equal(states["first"]["fc1.weight"], states["next round"]["fc1.weight"])


def _p_values_after_the_four_transforms(
    state: dict[str, np.ndarray], tuned: nn.Module, trigger: TriggerSet, name: str
) -> dict[str, float]:
    """Joint p-values of ten-class ``name`` models: pruned, int8, noised ``state``; ``tuned``."""

    def p_value(changed: dict[str, np.ndarray]) -> float:
        copy = create_model(name, 10, seed=0)
        load_state(copy, changed)
        return verify_watermark(copy, trigger).p_value

    return {
        "prune": p_value(prune_magnitude(state, 0.5)),
        "int8": p_value(quantize_int8(state)),
        "noise": p_value(add_gaussian_noise(state, 0.02, np.random.default_rng(0))),
        "fine-tune": verify_watermark(tuned, trigger).p_value,
    }


def test_digits_watermark_survives_the_four_transforms(
    digits_models: tuple[nn.Module, nn.Module, TriggerSet],
) -> None:
    marked, _, trigger = digits_models
    state = state_of(marked)
    _, _, x_test, y_test = digits()
    tuned = create_model("mlp", 10, seed=0)
    load_state(tuned, state)
    fine_tune(tuned, x_test, y_test, 5, 0.1)

    p_values = _p_values_after_the_four_transforms(state, tuned, trigger, "mlp")

    assert all(p < DETECTION_P for p in p_values.values()), p_values


# -------------------------------------------------------------------------- synthetic CNN


def _synthetic_28x28(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes of 28x28 images: a class-specific blob plus noise, standardised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    centres = [(6 + 8 * (c // 4), 5 + 6 * (c % 4)) for c in range(10)]
    images, labels = [], []
    for c, (cy, cx) in enumerate(centres):
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        images.append(blob + rng.normal(0, 0.3, size=(n_per_class, 28, 28)))
        labels += [c] * n_per_class
    x = np.concatenate(images)[:, None].astype(np.float32)
    x = (x - x.mean()) / x.std()
    return torch.from_numpy(x), torch.tensor(labels, dtype=torch.int64)


def test_cnn_watermark_survives_the_four_transforms() -> None:
    torch.set_num_threads(1)
    x, y = _synthetic_28x28(30, 0)
    x_tune, y_tune = _synthetic_28x28(20, 1)
    watermarker = Watermarker(KEY, (1, 28, 28), 10)
    trigger = watermarker.trigger
    marked = train("cnn", 10, x, y, 4, 0.05, watermarker)
    clean = train("cnn", 10, x, y, 4, 0.05, None)
    state = state_of(marked)
    tuned = create_model("cnn", 10, seed=0)
    load_state(tuned, state)
    fine_tune(tuned, x_tune, y_tune, 3, 0.05)

    assert model_accuracy(marked, x_tune, y_tune) >= model_accuracy(clean, x_tune, y_tune) - 0.05
    assert verify_watermark(clean, trigger).p_value >= 1e-3
    p_values = {
        "embedded": verify_watermark(marked, trigger).p_value,
        **_p_values_after_the_four_transforms(state, tuned, trigger, "cnn"),
    }
    assert all(p < DETECTION_P for p in p_values.values()), p_values

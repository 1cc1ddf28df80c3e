"""The model thief's transforms: pruning, int8, weight noise, clean fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.model_theft import add_gaussian_noise, fine_tune, prune_magnitude, quantize_int8
from common.models import create_model
from server.watermark import state_of


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(size=(10, 20)).astype(np.float32),
        "b": rng.normal(size=10).astype(np.float32),
    }


def test_pruning_zeroes_the_smallest_weights_and_keeps_biases() -> None:
    state = _state()
    before = {k: v.copy() for k, v in state.items()}

    pruned = prune_magnitude(state, 0.5)

    assert (pruned["w"] == 0).sum() == 100
    assert np.abs(pruned["w"][pruned["w"] != 0]).min() >= np.abs(state["w"][pruned["w"] == 0]).max()
    np.testing.assert_array_equal(pruned["b"], state["b"])
    assert all(np.array_equal(before[k], v) for k, v in state.items())  # input untouched


def test_int8_rounds_each_tensor_to_255_levels_within_half_a_step() -> None:
    state = _state()

    quantized = quantize_int8(state)

    for k, v in state.items():
        step = np.abs(v).max() / 127
        assert np.abs(quantized[k] - v).max() <= step / 2 + 1e-7
        assert len(np.unique(quantized[k])) <= 255


def test_int8_leaves_an_all_zero_tensor_alone() -> None:
    assert not quantize_int8({"z": np.zeros(4, np.float32)})["z"].any()


def test_gaussian_noise_has_the_requested_spread_and_leaves_the_input() -> None:
    state = _state()
    before = state["w"].copy()

    noisy = add_gaussian_noise(state, 0.1, np.random.default_rng(1))

    assert abs(float((noisy["w"] - state["w"]).std()) - 0.1) < 0.02
    np.testing.assert_array_equal(state["w"], before)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: prune_magnitude(_state(), 1.5), "fraction"),
        (lambda: prune_magnitude(_state(), -0.1), "fraction"),
        (lambda: add_gaussian_noise(_state(), -1.0, np.random.default_rng(0)), "std"),
        (lambda: add_gaussian_noise(_state(), float("nan"), np.random.default_rng(0)), "std"),
    ],
)
def test_transforms_refuse_out_of_domain_arguments(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 1, 8, 8, generator=generator), torch.randint(
        0, 10, (64,), generator=generator
    )


def test_fine_tune_trains_in_place_and_is_deterministic_for_a_seed() -> None:
    images, labels = _data()
    first, again, other = (create_model("mlp", 10, seed=0) for _ in range(3))
    start = state_of(first)

    fine_tune(first, images, labels, 2, 0.1, seed=0)
    fine_tune(again, images, labels, 2, 0.1, seed=0)
    fine_tune(other, images, labels, 2, 0.1, seed=1)

    assert any(not np.array_equal(start[k], v) for k, v in state_of(first).items())
    assert all(np.array_equal(v, state_of(again)[k]) for k, v in state_of(first).items())
    assert any(not np.array_equal(v, state_of(other)[k]) for k, v in state_of(first).items())


def test_fine_tune_for_zero_epochs_changes_nothing_and_refuses_bad_epochs() -> None:
    images, labels = _data()
    model = create_model("mlp", 10, seed=0)
    start = state_of(model)

    fine_tune(model, images, labels, 0, 0.1)

    assert all(np.array_equal(start[k], v) for k, v in state_of(model).items())
    with pytest.raises(ValueError, match="epochs"):
        fine_tune(model, images, labels, -1, 0.1)

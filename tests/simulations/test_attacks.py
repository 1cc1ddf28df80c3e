"""Byzantine client attacks: each changes the update or labels as specified; who attacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulations.adversary.attacks import (
    ATTACKS,
    GAUSSIAN_NORM_RATIO,
    SCALE_FACTOR,
    UPDATE_ATTACKS,
    attacker_ids,
    flip_labels,
    poison_update,
    poison_weights,
)


@pytest.fixture
def delta() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(50, 40)).astype(np.float32)


def test_names() -> None:
    assert ATTACKS == ("sign-flip", "scale", "gaussian", "label-flip")
    assert set(UPDATE_ATTACKS) == set(ATTACKS) - {"label-flip"}


def test_sign_flip_negates(delta: np.ndarray) -> None:
    before = delta.copy()
    out = poison_update("sign-flip", delta, np.random.default_rng(1))
    np.testing.assert_array_equal(out, -before)
    np.testing.assert_array_equal(delta, before)  # input untouched
    assert out.dtype == np.float32


def test_scale_multiplies_by_ten(delta: np.ndarray) -> None:
    out = poison_update("scale", delta, np.random.default_rng(1))
    assert SCALE_FACTOR == 10.0
    np.testing.assert_allclose(out, 10.0 * delta, rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == delta.shape


def test_gaussian_is_fresh_noise_of_three_times_the_norm(delta: np.ndarray) -> None:
    out = poison_update("gaussian", delta, np.random.default_rng(1))
    again = poison_update("gaussian", delta, np.random.default_rng(1))

    np.testing.assert_array_equal(out, again)  # drawn from the rng given
    assert out.shape == delta.shape and out.dtype == np.float32
    ratio = np.linalg.norm(out) / np.linalg.norm(delta)
    assert ratio == pytest.approx(GAUSSIAN_NORM_RATIO, rel=0.05)
    cosine = float(out.ravel() @ delta.ravel()) / (np.linalg.norm(out) * np.linalg.norm(delta))
    assert abs(cosine) < 0.1  # independent of the honest update
    assert abs(float(out.mean())) < 0.1 * float(out.std())


def test_label_flip_is_not_an_update_attack(delta: np.ndarray) -> None:
    with pytest.raises(ValueError, match="flip_labels"):
        poison_update("label-flip", delta, np.random.default_rng(0))


def test_unknown_attack_lists_kinds(delta: np.ndarray) -> None:
    with pytest.raises(ValueError, match="sign-flip"):
        poison_update("backdoor", delta, np.random.default_rng(0))


def test_poison_weights_poisons_local_minus_global() -> None:
    global_weights = {"w": np.ones((2, 3), np.float32), "b": np.zeros(2, np.float32)}
    local = {"w": np.full((2, 3), 1.5, np.float32), "b": np.full(2, -1.0, np.float32)}

    out = poison_weights("sign-flip", local, global_weights, np.random.default_rng(0))

    np.testing.assert_allclose(out["w"], np.full((2, 3), 0.5))
    np.testing.assert_allclose(out["b"], np.full(2, 1.0))
    scaled = poison_weights("scale", local, global_weights, np.random.default_rng(0))
    np.testing.assert_allclose(scaled["w"], np.full((2, 3), 6.0))
    with pytest.raises(ValueError, match="names differ"):
        poison_weights("scale", {"w": local["w"]}, global_weights, np.random.default_rng(0))


def test_flip_labels_maps_y_to_c_minus_1_minus_y() -> None:
    labels = torch.tensor([0, 1, 2, 9, 5], dtype=torch.int64)

    flipped = flip_labels(labels, 10)

    assert flipped.tolist() == [9, 8, 7, 0, 4]
    assert flipped.dtype == torch.int64
    assert labels.tolist() == [0, 1, 2, 9, 5]
    assert torch.equal(flip_labels(flipped, 10), labels)


@pytest.mark.parametrize(
    ("labels", "classes"),
    [
        (torch.tensor([0, 10]), 10),
        (torch.tensor([-1, 0]), 10),
        (torch.tensor([0.0, 1.0]), 10),
        (torch.tensor([0, 1]), 1),
    ],
)
def test_flip_labels_refuses_bad_input(labels: torch.Tensor, classes: int) -> None:
    with pytest.raises(ValueError):
        flip_labels(labels, classes)


@pytest.mark.parametrize(
    ("num_clients", "fraction", "size"),
    [
        (10, 0.2, 2),
        (10, 0.0, 0),
        (10, 1.0, 10),
        (10, 0.25, 3),
        (7, 0.3, 2),
        (1, 0.4, 0),
        (100, 0.2, 20),
    ],
)
def test_attacker_ids_has_the_right_size(num_clients: int, fraction: float, size: int) -> None:
    ids = attacker_ids(num_clients, fraction, seed=0)
    assert isinstance(ids, frozenset)
    assert len(ids) == size
    assert all(type(i) is int and 0 <= i < num_clients for i in ids)


def test_attacker_ids_is_deterministic_and_depends_on_the_seed() -> None:
    first = attacker_ids(20, 0.2, seed=7)
    assert attacker_ids(20, 0.2, seed=7) == first
    choices = {attacker_ids(20, 0.2, seed=s) for s in range(10)}
    assert len(choices) > 5  # not a fixed prefix
    assert attacker_ids(20, 0.2, seed=-3) == attacker_ids(20, 0.2, seed=-3)


@pytest.mark.parametrize(
    ("num_clients", "fraction"), [(0, 0.2), (10, -0.1), (10, 1.5), (10, float("nan")), (True, 0.2)]
)
def test_attacker_ids_refuses_bad_input(num_clients: int, fraction: float) -> None:
    with pytest.raises(ValueError):
        attacker_ids(num_clients, fraction, seed=0)

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.data import (
    DataError,
    FederatedData,
    ImageSet,
    femnist_from_hub_split,
    hub_images,
    load_data,
    load_digits_data,
)

DIGITS_SIZE = 1797  # scikit-learn's documented size of the digits data set


def rows(images: np.ndarray, labels: np.ndarray) -> Counter[bytes]:
    """Multiset of examples (pixels and label) as hashable rows."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(labels), -1)
    return Counter(
        x.tobytes() + int(y).to_bytes(2, "little") for x, y in zip(flat, labels, strict=True)
    )


# ----------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> FederatedData:
    return load_digits_data(seed=0, test_fraction=0.2)


def test_digits_split_partitions_the_whole_set(digits: FederatedData) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    everything = rows(bunch.images, bunch.target)

    assert len(digits.train) + len(digits.test) == DIGITS_SIZE
    # Together the two splits are exactly the data set, each example once: none in both.
    assert (
        rows(digits.train.images, digits.train.labels)
        + rows(digits.test.images, digits.test.labels)
        == everything
    )


def test_digits_split_sizes_and_shapes(digits: FederatedData) -> None:
    assert len(digits.test) == 360  # ceil(0.2 * 1797), scikit-learn's rounding of test_size
    assert digits.train.images.shape == (1437, 1, 8, 8)
    assert digits.image_shape == (1, 8, 8)
    assert digits.train.labels.dtype == np.int64
    assert digits.num_classes == 10
    assert digits.pixel_scale == 16.0
    assert float(digits.train.images.max()) == 16.0
    assert digits.train.writers is None


def test_digits_split_is_stratified(digits: FederatedData) -> None:
    total = np.bincount(np.concatenate([digits.train.labels, digits.test.labels]), minlength=10)
    in_test = np.bincount(digits.test.labels, minlength=10)

    assert np.all(np.abs(in_test - 0.2 * total) < 1)


def test_digits_split_is_deterministic_in_seed(digits: FederatedData) -> None:
    again = load_digits_data(seed=0, test_fraction=0.2)
    other = load_digits_data(seed=1, test_fraction=0.2)

    assert np.array_equal(again.train.images, digits.train.images)
    assert np.array_equal(again.test.labels, digits.test.labels)
    assert not np.array_equal(other.test.images, digits.test.images)
    assert rows(other.test.images, other.test.labels) != rows(
        digits.test.images, digits.test.labels
    )


def test_digits_test_fraction_is_respected() -> None:
    data = load_digits_data(seed=0, test_fraction=0.5)

    assert len(data.test) in (898, 899)
    assert len(data.train) + len(data.test) == DIGITS_SIZE


def test_tensors_standardise_with_training_statistics(digits: FederatedData) -> None:
    x_train, y_train = digits.tensors(digits.train)
    x_test, _ = digits.tensors(digits.test)

    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert x_train.shape == (1437, 1, 8, 8)
    assert abs(float(x_train.mean())) < 1e-5
    assert abs(float(x_train.std(unbiased=False)) - 1) < 1e-5
    # The test split uses the training pool's statistics, not its own.
    expected = (digits.test.images.astype(np.float64) / 16 - digits.mean) / digits.std
    assert np.allclose(x_test.numpy(), expected, atol=1e-5)


def test_tensors_of_indices_select_those_examples(digits: FederatedData) -> None:
    indices = np.array([5, 0, 1436, 5], dtype=np.int64)
    x_all, y_all = digits.tensors(digits.train)

    x, y = digits.tensors(digits.train, indices)

    assert torch.equal(x, x_all[indices])
    assert torch.equal(y, y_all[indices])


def test_load_data_digits_ignores_data_dir() -> None:
    data = load_data("digits", "/nonexistent", 3, 0.25)

    assert data.name == "digits"
    assert len(data.train) + len(data.test) == DIGITS_SIZE


def test_load_data_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar"):
        load_data("cifar", str(tmp_path), 0, 0.2)


def test_load_data_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "absent"

    with pytest.raises(DataError) as info:
        load_data("mnist", str(folder), 0, 0.2)

    assert str(folder) in str(info.value)


# ------------------------------------------------------------------ Hugging Face Hub copies


def hub_split(images: np.ndarray, **columns: Any) -> Any:
    """A Hugging Face ``Dataset`` shaped like the hub's copies (PIL images in a column)."""
    from datasets import Dataset
    from PIL import Image

    return Dataset.from_dict({"image": [Image.fromarray(x) for x in images], **columns})


def test_hub_images_become_an_imageset() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    split = hub_split(images, label=[3, 1, 4, 1, 5, 9])

    pool = hub_images(split, "image", "label")

    assert pool.images.shape == (6, 1, 28, 28)
    assert np.array_equal(pool.images[:, 0], images)
    assert pool.labels.tolist() == [3, 1, 4, 1, 5, 9]


def test_hub_femnist_splits_by_seed_and_inverts() -> None:
    images = np.full((200, 28, 28), 255, np.uint8)
    split = hub_split(
        images, character=[i % 62 for i in range(200)], writer_id=[f"w{i % 4}" for i in range(200)]
    )

    first = femnist_from_hub_split(split, seed=1, test_fraction=0.25)
    again = femnist_from_hub_split(split, seed=1, test_fraction=0.25)

    assert len(first.train) + len(first.test) == 200
    assert 20 < len(first.test) < 80
    assert np.array_equal(first.test.labels, again.test.labels)
    assert float(first.train.images.max()) == 0.0  # white background turned black
    assert first.train.writers is not None and set(first.train.writers) <= {"w0", "w1", "w2", "w3"}


def test_without_data_dir_and_offline_the_error_names_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flwr_datasets

    def offline(**_: Any) -> None:
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(flwr_datasets, "FederatedDataset", offline)
    load_data.cache_clear()

    with pytest.raises(DataError) as err:
        load_data("mnist", "", 0, 0.2)

    assert "`data-dir`" in str(err.value) and "\n" not in str(err.value)


def test_imageset_length() -> None:
    pool = ImageSet(np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, np.int64))

    assert len(pool) == 3

"""The built-in image tasks: raw pools, standardised selections, bit for bit as numpy's."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

import common.data
from common.data import DataError, ImageSet, pool_statistics, read_data
from common.task import Examples, TaskSettings
from common.tasks.image_sets import ImageSetTask, StandardisedPool

SETTINGS = TaskSettings(seed=0, data_dir="", test_fraction=0.2, model="auto")


def _numpy_stats(images: npt.NDArray[np.generic], scale: float) -> tuple[float, float]:
    scaled = images.astype(np.float32) / scale
    return float(scaled.mean()), float(scaled.std())


@pytest.mark.parametrize("size", [1, 7, 4096, 4097, 50_001, 123_457])
@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_pool_statistics_equal_numpys_bit_for_bit(
    size: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common.data, "_STATS_BLOCK", 1024)  # many blocks, deep recursion
    rng = np.random.default_rng(size)
    images: npt.NDArray[np.uint8] | npt.NDArray[np.float32]
    if kind == "uint8":
        images, scale = rng.integers(0, 256, (size, 1, 2, 2), dtype=np.uint8), 255.0
    else:
        images, scale = rng.integers(0, 17, (size, 1, 2, 2)).astype(np.float32), 16.0

    assert pool_statistics(images, scale) == _numpy_stats(images, scale)


def test_digits_statistics_are_numpys() -> None:
    data = ImageSetTask("digits", SETTINGS, num_classes=10, image_shape=(1, 8, 8)).data

    assert (data.mean, data.std) == _numpy_stats(data.train.images, data.pixel_scale)


@pytest.fixture
def digits() -> ImageSetTask:
    return ImageSetTask("digits", SETTINGS, num_classes=10, image_shape=(1, 8, 8))


def _eager_pool(task: ImageSetTask) -> Examples:
    return Examples(*task.data.tensors(task.data.train))


def test_a_selection_is_the_eager_pools_selection_bit_for_bit(digits: ImageSetTask) -> None:
    indices = np.array([900, 3, 3, 17, 0, len(digits.data.train) - 1], dtype=np.int64)

    got, expected = digits.pool().select(indices), _eager_pool(digits).select(indices)

    assert got.inputs.dtype == torch.float32
    assert torch.equal(got.inputs, expected.inputs)
    assert torch.equal(got.labels, expected.labels)


def test_selecting_never_standardises_the_whole_pool(digits: ImageSetTask) -> None:
    pool = digits.pool()
    assert isinstance(pool, StandardisedPool)

    pool.select(np.arange(10, dtype=np.int64))

    assert "inputs" not in vars(pool)  # the float32 pool was never built
    assert len(pool) == len(digits.data.train)


def test_the_whole_pool_is_still_there_when_asked_for(digits: ImageSetTask) -> None:
    pool, expected = digits.pool(), _eager_pool(digits)

    assert torch.equal(pool.inputs, expected.inputs)
    assert torch.equal(pool.labels, expected.labels)
    assert digits.pool() is pool  # one per task


def test_a_node_file_is_standardised_as_before_without_keeping_the_pool(
    digits: ImageSetTask, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 17, (30, 8, 8)), rng.integers(0, 10, 30)
    np.savez(tmp_path / "node.npz", x=x, y=y)

    got = digits.node_examples(tmp_path / "node.npz")

    assert "data" not in vars(digits)  # the pool was read for its statistics, then dropped
    eager = ImageSetTask("digits", SETTINGS, num_classes=10, image_shape=(1, 8, 8)).data
    expected = eager.tensors(ImageSet(x[:, None].astype(np.float32), y.astype(np.int64)))
    assert torch.equal(got.inputs, expected[0]) and torch.equal(got.labels, expected[1])


def _write_idx(path: Path, array: npt.NDArray[np.uint8]) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def test_the_test_split_is_read_only_when_asked_for(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(
            tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8)
        )
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, np.uint8))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")

    data = read_data("mnist", str(tmp_path), 0, 0.2)  # a client's view: the pool only

    assert len(data.train) > 0
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        _ = data.test


def test_standardising_in_place_is_the_formula_bit_for_bit(digits: ImageSetTask) -> None:
    data = digits.data
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 17, (50, 1, 8, 8)).astype(np.float32)

    got, _ = data.tensors(ImageSet(raw, np.zeros(50, np.int64)))

    expected = (raw.astype(np.float32) / data.pixel_scale - data.mean) / data.std
    assert got.numpy().tobytes() == expected.tobytes()

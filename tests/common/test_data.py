from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.data import (
    FEMNIST_FILE,
    FEMNIST_KEYS,
    DataError,
    FederatedData,
    ImageSet,
    femnist_from_hub_split,
    hub_images,
    load_data,
    load_digits_data,
    read_idx,
)

DIGITS_SIZE = 1797  # scikit-learn's documented size of the digits data set


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX layout (LeCun's MNIST page): magic, dims, data."""
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return magic + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


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


# -------------------------------------------------------------------------------------- IDX


@settings(max_examples=25, deadline=None)
@given(
    array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)),
    compress=st.booleans(),
)
def test_idx_round_trip(
    tmp_path_factory: pytest.TempPathFactory, array: np.ndarray, compress: bool
) -> None:
    path = write_idx(tmp_path_factory.mktemp("idx") / "a-idx-ubyte", array, compress=compress)

    read = read_idx(path)

    assert read.dtype == np.uint8
    assert read.shape == array.shape
    assert np.array_equal(read, array)


def test_idx_reads_a_known_file(tmp_path: Path) -> None:
    # Hand-written bytes: magic 0x00000801 (ubyte, 1 dim), 3 items, then labels 7, 2, 9.
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(bytes.fromhex("00000801 00000003 070209"))

    assert read_idx(path).tolist() == [7, 2, 9]


def corrupt_gzip(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    for i in range(12, len(packed) - 8):  # the deflate stream, not the header or trailer
        packed[i] ^= 0x55
    return bytes(packed)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))

BROKEN: dict[str, bytes] = {
    "empty": b"",
    "short-magic": b"\x00\x00\x08",
    "wrong-first-bytes": b"\x01\x00" + GOOD[2:],
    "float-dtype": GOOD[:2] + b"\x0d" + GOOD[3:],
    "int32-dtype": GOOD[:2] + b"\x0c" + GOOD[3:],
    "zero-dims": b"\x00\x00\x08\x00",
    "truncated-header": GOOD[:9],
    "truncated-data": GOOD[:-1],
    "extra-data": GOOD + b"\x00",
    "text": b"this is not an IDX file at all",
    "truncated-gzip": gzip.compress(GOOD)[:20],
    "corrupt-gzip": corrupt_gzip(GOOD * 50),
    "crc-mismatch": gzip.compress(GOOD)[:-8] + b"\x00" * 8,
    "gzip-of-garbage": gzip.compress(b"garbage"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_idx_is_a_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}-idx3-ubyte"
    path.write_bytes(BROKEN[case])

    with pytest.raises(DataError) as info:
        read_idx(path)

    assert str(path) in str(info.value)


def test_missing_idx_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent-idx3-ubyte"

    with pytest.raises(DataError) as info:
        read_idx(path)

    assert str(path) in str(info.value)


def make_mnist_folder(folder: Path, *, seed: int, compress: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (f"{stem}.gz" if compress else stem), array, compress=compress)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_load_idx_data_set(tmp_path: Path, name: str, nested: bool, compress: bool) -> None:
    folder = tmp_path / name if nested else tmp_path
    arrays = make_mnist_folder(folder, seed=len(name), compress=compress)

    data = load_data(name, str(tmp_path), 0, 0.2)

    assert data.name == name
    assert data.image_shape == (1, 28, 28)
    assert np.array_equal(data.train.images[:, 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert data.train.labels.dtype == np.int64
    assert data.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert (data.num_classes, data.pixel_scale) == (10, 255.0)
    train_pixels = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    assert data.mean == pytest.approx(train_pixels.mean(), rel=1e-5)
    assert data.std == pytest.approx(train_pixels.std(), rel=1e-5)


def test_load_idx_data_missing_file_names_it(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path / "mnist", seed=0, compress=True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_data("mnist", str(tmp_path), 0, 0.2)


def test_load_idx_data_mismatched_counts(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path, seed=0, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), compress=False)

    with pytest.raises(DataError, match="do not match"):
        load_data("mnist", str(tmp_path), 0, 0.2)


def test_load_idx_data_corrupt_member_names_it(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path, seed=0, compress=True)
    broken = tmp_path / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:100])

    with pytest.raises(DataError) as info:
        load_data("mnist", str(tmp_path), 0, 0.2)

    assert str(broken) in str(info.value)


# ---------------------------------------------------------------------------------- FEMNIST


def femnist_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (9, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 62, 9, dtype=np.uint8),
        "writer_train": np.array(["f0001_07", "f0002_11", "f0003_00"] * 3),
        "x_test": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 62, 4, dtype=np.uint8),
        "writer_test": np.array(["f0001_07", "f0004_42", "f0004_42", "f0005_13"]),
    }


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
def test_femnist_loads_and_inverts(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "femnist" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    arrays = femnist_arrays()
    np.savez_compressed(folder / FEMNIST_FILE, **arrays)

    data = load_data("femnist", str(tmp_path), 0, 0.2)

    assert (data.name, data.num_classes, data.pixel_scale) == ("femnist", 62, 255.0)
    assert data.image_shape == (1, 28, 28)
    assert np.array_equal(data.train.images[:, 0].astype(int), 255 - arrays["x_train"].astype(int))
    assert np.array_equal(data.test.images[:, 0].astype(int), 255 - arrays["x_test"].astype(int))
    assert data.train.labels.dtype == np.int64
    assert data.train.labels.tolist() == arrays["y_train"].tolist()
    assert data.train.writers is not None and data.test.writers is not None
    assert data.train.writers.tolist() == arrays["writer_train"].tolist()
    assert data.test.writers.tolist() == arrays["writer_test"].tolist()


@pytest.mark.parametrize("missing", FEMNIST_KEYS)
def test_femnist_missing_key_is_a_data_error(tmp_path: Path, missing: str) -> None:
    arrays = femnist_arrays()
    del arrays[missing]
    path = tmp_path / FEMNIST_FILE
    np.savez(path, **arrays)

    with pytest.raises(DataError) as info:
        load_data("femnist", str(tmp_path), 0, 0.2)

    assert str(path) in str(info.value)
    assert missing in str(info.value)


def test_femnist_refuses_pickled_arrays(tmp_path: Path) -> None:
    arrays = femnist_arrays()
    arrays["writer_train"] = arrays["writer_train"].astype(object)
    path = tmp_path / FEMNIST_FILE
    np.savez(path, **arrays)

    with pytest.raises(DataError) as info:
        load_data("femnist", str(tmp_path), 0, 0.2)

    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a zip archive", b"PK\x03\x04truncated"])
def test_femnist_unreadable_file_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / FEMNIST_FILE
    path.write_bytes(content)

    with pytest.raises(DataError) as info:
        load_data("femnist", str(tmp_path), 0, 0.2)

    assert str(path) in str(info.value)


def test_femnist_inconsistent_lengths_is_a_data_error(tmp_path: Path) -> None:
    arrays = femnist_arrays()
    arrays["y_test"] = arrays["y_test"][:-1]
    np.savez(tmp_path / FEMNIST_FILE, **arrays)

    with pytest.raises(DataError, match="inconsistent"):
        load_data("femnist", str(tmp_path), 0, 0.2)


def test_femnist_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=FEMNIST_FILE.replace(".", r"\.")):
        load_data("femnist", str(tmp_path), 0, 0.2)


# ------------------------------------------------------- public layouts, built as fixtures


def write_idx_set(folder: Path, rng: np.random.Generator, train: int, test: int) -> Path:
    """Write an MNIST-layout folder (gzip IDX, the official file names) of random digits."""
    folder.mkdir(parents=True)
    for split, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels, compress=True)
    return folder


@pytest.fixture(scope="module")
def public_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder laid out as a user downloads MNIST, Fashion-MNIST and FEMNIST (LEAF)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    write_idx_set(root / "mnist", rng, train=60, test=20)
    write_idx_set(root / "fashion-mnist", rng, train=40, test=10)
    (root / "femnist").mkdir()
    writers_train = np.array([f"f{i % 5:04d}" for i in range(50)])
    writers_test = np.array([f"f{i % 7:04d}" for i in range(21)])
    ink = np.full((50, 28, 28), 255, np.uint8)
    ink[:, 10:18, 12:16] = 0  # dark strokes on white, LEAF's convention
    np.savez(
        root / "femnist" / FEMNIST_FILE,
        x_train=ink,
        y_train=(np.arange(50) % 62).astype(np.uint8),
        writer_train=writers_train,
        x_test=ink[:21],
        y_test=(np.arange(21) % 62).astype(np.uint8),
        writer_test=writers_test,
    )
    return root


def test_mnist_layout_loads_official_splits(public_layout: Path) -> None:
    data = load_data("mnist", str(public_layout), 0, 0.2)

    assert data.train.images.shape == (60, 1, 28, 28)
    assert data.test.images.shape == (20, 1, 28, 28)
    assert data.train.images.dtype == np.uint8
    assert set(np.unique(data.train.labels).tolist()) == set(range(10))
    scaled = data.train.images.astype(np.float64) / 255.0
    assert data.mean == pytest.approx(float(scaled.mean()), rel=1e-6)
    assert data.std == pytest.approx(float(scaled.std()), rel=1e-5)


def test_mnist_tensors_are_standardised(public_layout: Path) -> None:
    data = load_data("mnist", str(public_layout), 0, 0.2)
    sample = np.arange(0, 60, 3, dtype=np.int64)

    x, y = data.tensors(data.train, sample)
    x_all, _ = data.tensors(data.train)

    assert x.shape == (len(sample), 1, 28, 28)
    assert abs(float(x_all.mean())) < 1e-4
    assert abs(float(x_all.std()) - 1) < 1e-2
    assert torch.equal(y, torch.from_numpy(data.train.labels[sample]))


def test_fashion_mnist_reads_its_own_folder(public_layout: Path) -> None:
    data = load_data("fashion-mnist", str(public_layout), 0, 0.2)

    assert data.train.images.shape == (40, 1, 28, 28)
    assert data.test.images.shape == (10, 1, 28, 28)


def test_femnist_layout_keeps_writers_and_inverts_ink(public_layout: Path) -> None:
    data = load_data("femnist", str(public_layout), 0, 0.2)

    assert data.train.images.shape == (50, 1, 28, 28)
    assert data.test.images.shape == (21, 1, 28, 28)
    assert data.num_classes == 62
    assert data.train.writers is not None and data.test.writers is not None
    assert (len(set(data.train.writers)), len(set(data.test.writers))) == (5, 7)
    # After inversion the background is black, as in MNIST: most pixels are dark.
    assert float(np.median(data.train.images)) == 0.0


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

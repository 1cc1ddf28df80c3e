from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.data import FEMNIST_FILE, FEMNIST_KEYS, DataError, load_data, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX layout (LeCun's MNIST page): magic, dims, data."""
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return magic + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


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

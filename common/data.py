"""Data sets: the embedded default (scikit-learn's digits) and MNIST, Fashion-MNIST, FEMNIST.

The last three are read from a local folder (``data-dir``) when one is given, else loaded with
``flwr-datasets`` from the Hugging Face Hub (``HUB_DATASETS``; needs a network connection).

Every data set comes as a ``FederatedData``: a training pool that clients partition among
themselves and a fixed test split that only the server uses for central evaluation, so no client
ever trains on it. Images are kept as ``uint8``-range arrays of shape ``(N, 1, H, W)`` until a
client asks for its partition as normalised float32 tensors.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

IDX_UBYTE = 0x08


class DataError(ValueError):
    """A data file is missing or corrupt; the message names the file and the fix."""


@dataclass(frozen=True)
class ImageSet:
    """Images ``(N, 1, H, W)`` of raw pixel values, labels ``(N,)`` int64, optional writer ids."""

    images: npt.NDArray[np.floating] | npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    writers: npt.NDArray[np.str_] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FederatedData:
    """A training pool for clients and a server-only test split, with pixel statistics.

    ``pixel_scale`` maps raw pixels to [0, 1]; ``mean`` and ``std`` are computed on the
    training pool after scaling, and are used to standardise both splits identically.
    ``test`` is read by ``read_test`` on first use, so a client never loads it.
    """

    name: str
    train: ImageSet
    read_test: Callable[[], ImageSet]
    num_classes: int
    pixel_scale: float
    mean: float
    std: float

    @cached_property
    def test(self) -> ImageSet:
        """The server's test split, read on first use."""
        return self.read_test()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(1, H, W)``."""
        shape = self.train.images.shape
        return (int(shape[1]), int(shape[2]), int(shape[3]))

    def tensors(
        self, split: ImageSet, indices: npt.NDArray[np.int64] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return standardised float32 images ``(n, 1, H, W)`` and int64 labels ``(n,)``."""
        images = split.images if indices is None else split.images[indices]
        labels = split.labels if indices is None else split.labels[indices]
        # In place, one float32 copy: the same float32 operations as
        # ``(images / pixel_scale - mean) / std``, without a temporary per step.
        x = images.astype(np.float32)
        x /= self.pixel_scale
        x -= self.mean
        x /= self.std
        return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


_STATS_BLOCK = 1 << 20
"""Pixels standardised at a time while computing a pool's statistics."""


def _pairwise_sum(
    values: Callable[[int, int], npt.NDArray[np.float32]], start: int, stop: int
) -> np.float32:
    # numpy sums a contiguous float32 array pairwise, splitting n at n // 2 rounded down to a
    # multiple of 8; following the same splits over blocks gives its result bit for bit without
    # the whole pool as float32 in memory.
    n = stop - start
    if n <= _STATS_BLOCK:
        return np.float32(np.add.reduce(values(start, stop)))
    half = n // 2
    half -= half % 8
    return np.float32(
        _pairwise_sum(values, start, start + half) + _pairwise_sum(values, start + half, stop)
    )


def pool_statistics(
    images: npt.NDArray[np.floating] | npt.NDArray[np.uint8], pixel_scale: float
) -> tuple[float, float]:
    """Return ``(mean, std)`` of ``images / pixel_scale`` in float32, as numpy's would be.

    Bit-identical to ``scaled.mean()`` and ``scaled.std()`` of the float32 array
    ``images.astype(np.float32) / pixel_scale``, computed block by block.
    """
    flat = np.ascontiguousarray(images).reshape(-1)
    n = int(flat.size)

    def scaled(start: int, stop: int) -> npt.NDArray[np.float32]:
        return flat[start:stop].astype(np.float32) / pixel_scale

    total = _pairwise_sum(scaled, 0, n)
    mean = np.true_divide(total, n, dtype=np.float32)

    def squared(start: int, stop: int) -> npt.NDArray[np.float32]:
        block = scaled(start, stop)
        block -= mean
        block *= block
        return block

    variance = np.true_divide(_pairwise_sum(squared, 0, n), n, dtype=np.float32)
    return float(mean), float(np.sqrt(variance))


def _finish(
    name: str,
    train: ImageSet,
    test: ImageSet | Callable[[], ImageSet],
    num_classes: int,
    pixel_scale: float,
) -> FederatedData:
    mean, std = pool_statistics(train.images, pixel_scale)
    return FederatedData(
        name=name,
        train=train,
        read_test=test if callable(test) else lambda: test,
        num_classes=num_classes,
        pixel_scale=pixel_scale,
        mean=mean,
        std=std or 1.0,
    )


def load_digits_data(seed: int, test_fraction: float) -> FederatedData:
    """Scikit-learn's 8x8 digits (1,797 images, pixel values 0-16), split stratified by label."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return _finish("digits", ImageSet(x_tr, y_tr), ImageSet(x_te, y_te), 10, 16.0)


_READ_BLOCK = 1 << 20
"""Bytes read at a time into an IDX array, so a file is never held twice in memory."""


def _read_idx_stream(path: Path, fh: io.BufferedIOBase) -> npt.NDArray[np.uint8]:
    head = fh.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != IDX_UBYTE:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; replace it")
    ndim = head[3]
    shape_bytes = fh.read(4 * ndim)
    if ndim == 0 or len(shape_bytes) < 4 * ndim:
        raise DataError(f"{path} has a truncated IDX header; replace it with an intact copy")
    dims = struct.unpack(f">{ndim}I", shape_bytes)
    header, expected = 4 + 4 * ndim, math.prod(dims)
    out = np.empty(expected, dtype=np.uint8)
    view, got = out.data, 0
    while got < expected:
        count = fh.readinto(view[got : got + _READ_BLOCK])
        if not count:
            break
        got += count
    trailing = len(fh.read(1)) if got == expected else 0  # reaching the end checks gzip's CRC
    if got != expected or trailing:
        size = f"{header + got} bytes" if got < expected else "more bytes"
        raise DataError(
            f"{path} holds {size} but its header promises {header + expected}; "
            f"the file is truncated or corrupt, replace it"
        )
    return out.reshape(dims)


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """Read an IDX file of unsigned bytes (gzip-compressed or not) into an array."""
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            if not compressed:
                return _read_idx_stream(path, raw)
            with gzip.GzipFile(fileobj=raw) as unpacked:
                return _read_idx_stream(path, unpacked)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"cannot read {path} ({exc}); replace it with an intact copy") from None


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{folder / stem}[.gz] not found; point `data-dir` at a folder holding "
        f"the IDX files (README.md, section Data, says where to get them)"
    )


def _subfolder(data_dir: Path, name: str) -> Path:
    """Accept both ``data-dir`` and ``data-dir/<name>`` as the folder of a data set."""
    nested = data_dir / name
    return nested if nested.is_dir() else data_dir


def load_idx_data(name: str, data_dir: Path) -> FederatedData:
    """MNIST or Fashion-MNIST in the IDX layout; the official t10k split is the server's."""
    folder = _subfolder(data_dir, name)
    files = {
        split: (
            _find_idx(folder, f"{split}-images-idx3-ubyte"),
            _find_idx(folder, f"{split}-labels-idx1-ubyte"),
        )
        for split in ("train", "t10k")
    }

    def read_split(split: str) -> ImageSet:
        images, labels = (read_idx(path) for path in files[split])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
        return ImageSet(images[:, None], labels.astype(np.int64))

    return _finish(name, read_split("train"), lambda: read_split("t10k"), 10, 255.0)


FEMNIST_FILE = "femnist_leaf_subset.npz"
FEMNIST_KEYS = ("x_train", "y_train", "writer_train", "x_test", "y_test", "writer_test")


def load_femnist_data(data_dir: Path) -> FederatedData:
    """FEMNIST (LEAF) from the npz layout; pixels inverted to MNIST's ink-on-black convention."""
    folder = _subfolder(data_dir, "femnist")
    path = folder / FEMNIST_FILE
    if not path.is_file():
        raise DataError(f"{path} not found; point `data-dir` at a folder holding {FEMNIST_FILE}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in FEMNIST_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} lacks arrays {missing}; replace it with an intact copy")
            arrays = {k: npz[k] for k in FEMNIST_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path} ({exc}); replace it with an intact copy") from None
    sets = []
    for split in ("train", "test"):
        x, y, w = arrays[f"x_{split}"], arrays[f"y_{split}"], arrays[f"writer_{split}"]
        if x.ndim != 3 or not (x.shape[0] == y.shape[0] == w.shape[0]):
            raise DataError(f"{path}: {split} arrays have inconsistent shapes; replace the file")
        inverted = (255 - x.astype(np.uint8))[:, None]
        sets.append(ImageSet(inverted, y.astype(np.int64), w.astype(np.str_)))
    return _finish("femnist", sets[0], sets[1], 62, 255.0)


HUB_DATASETS = {
    "mnist": "ylecun/mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
    "femnist": "flwrlabs/femnist",
}
"""Hugging Face Hub names of the file data sets, loaded when no ``data-dir`` is given."""


def hub_images(split: Any, image_column: str, label_column: str) -> ImageSet:
    """Turn a Hugging Face ``Dataset`` split of grayscale images into an ``ImageSet``."""
    images = np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in split[image_column]])
    labels = np.asarray(split[label_column], dtype=np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(f"hub split has images {images.shape} and labels {labels.shape}")
    return ImageSet(images[:, None], labels)


def _dark_background(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    # LEAF's FEMNIST draws dark ink on white; every model here expects MNIST's ink on black.
    return (255 - images).astype(np.uint8) if float(np.median(images)) > 127 else images


def femnist_from_hub_split(split: Any, seed: int, test_fraction: float) -> FederatedData:
    """FEMNIST from the hub's single split: a seeded test share of each writer's examples."""
    pool = hub_images(split, "image", "character")
    writers = np.asarray(split["writer_id"]).astype(np.str_)
    rng = np.random.default_rng(seed)
    is_test = rng.random(len(pool)) < test_fraction
    images = _dark_background(np.asarray(pool.images, dtype=np.uint8))
    train = ImageSet(images[~is_test], pool.labels[~is_test], writers[~is_test])
    test = ImageSet(images[is_test], pool.labels[is_test], writers[is_test])
    return _finish("femnist", train, test, 62, 255.0)


def load_hub_data(name: str, seed: int, test_fraction: float) -> FederatedData:
    """Load a file data set from the Hugging Face Hub through ``flwr-datasets``."""
    try:
        from flwr_datasets import FederatedDataset

        fds = FederatedDataset(dataset=HUB_DATASETS[name], partitioners={"train": 1})
        train = fds.load_split("train")
        if name == "femnist":
            return femnist_from_hub_split(train, seed, test_fraction)
        test = fds.load_split("test")
    except (ImportError, OSError, ValueError, ConnectionError) as exc:
        raise DataError(
            f"cannot load {name} from the Hugging Face Hub ({type(exc).__name__}); on a machine "
            f"without network, set `data-dir` to a folder holding its files (README.md, Data)"
        ) from None
    return _finish(
        name, hub_images(train, "image", "label"), hub_images(test, "image", "label"), 10, 255.0
    )


@lru_cache(maxsize=4)
def load_data(name: str, data_dir: str, seed: int, test_fraction: float) -> FederatedData:
    """Load a data set by its config name, once per process (``read_data``, cached)."""
    return read_data(name, data_dir, seed, test_fraction)


def read_data(name: str, data_dir: str, seed: int, test_fraction: float) -> FederatedData:
    """Read a data set by its config name.

    ``seed`` and ``test_fraction`` matter only for ``digits`` and the hub's FEMNIST, which have
    no official test split. Without ``data_dir`` the file data sets come from the hub.
    """
    if name == "digits":
        return load_digits_data(seed, test_fraction)
    if name not in HUB_DATASETS:
        raise DataError(f"unknown dataset {name!r}; use digits, mnist, fashion-mnist or femnist")
    if not data_dir:
        return load_hub_data(name, seed, test_fraction)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"data-dir {folder} is not a folder; point `data-dir` at the folder holding {name}"
        )
    if name == "femnist":
        return load_femnist_data(folder)
    return load_idx_data(name, folder)

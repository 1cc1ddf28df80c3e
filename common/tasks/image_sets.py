"""A built-in image data set of ``common.data`` as a ``Task``, with a registered model.

Pool and test examples are ``FederatedData.tensors`` of the set's training pool and test split;
the model is ``create_model(model_for(settings.model, image_shape), num_classes, seed=seed)``,
refused with ``TaskError`` when it does not take the set's image size (``IMAGE_SIDES``).
Data are read lazily: loading the task touches no file until examples are asked for.

A deployed node's ``data-path`` is either an ``.npz`` file with arrays ``x`` (raw pixels,
``(n, H, W)`` or ``(n, 1, H, W)``, in the set's stored range: 0-16 for digits, 0-255 otherwise,
ink on a dark background) and ``y`` (labels), or a folder holding the IDX pair
``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``. Its pixels are
standardised with the training pool's statistics, as the server's test split is, so the node
needs the data set itself too (``data-dir``, or the hub; digits is embedded).
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.data import DataError, FederatedData, ImageSet, load_data, read_data, read_idx
from common.models import IMAGE_SIDES, create_model, model_for
from common.task import Examples, Task, TaskError, TaskSettings

NODE_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
"""The IDX pair a node's data folder holds (each optionally gzip-compressed, ``.gz``)."""


class ImageSetTask(Task):
    """One of ``common.data``'s image sets (``name`` as ``load_data`` knows it) as a task."""

    def __init__(
        self,
        name: str,
        settings: TaskSettings,
        *,
        num_classes: int,
        image_shape: tuple[int, int, int],
    ) -> None:
        self.name = name
        self.settings = settings
        self._num_classes = num_classes
        self._image_shape = image_shape

    @property
    def num_classes(self) -> int:
        """Number of classes of the set."""
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(1, H, W)``."""
        return self._image_shape

    def build_model(self) -> nn.Module:
        """Return the registered model `model` names (``auto``: the one fitting the images)."""
        name = model_for(self.settings.model, self._image_shape)
        side = self._image_shape[-1]
        if IMAGE_SIDES.get(name, side) != side:
            fitting = sorted(m for m, s in IMAGE_SIDES.items() if s == side)
            raise TaskError(
                f"model `{name}` takes {IMAGE_SIDES[name]}x{IMAGE_SIDES[name]} images but "
                f"{self.name} has {side}x{side}; set model to auto or one of {fitting}"
            )
        return create_model(name, self._num_classes, seed=self.settings.seed)

    @cached_property
    def data(self) -> FederatedData:
        """The data set, loaded on first use (``common.data.load_data`` caches it per process)."""
        s = self.settings
        return load_data(self.name, s.data_dir, s.seed, s.test_fraction)

    @cached_property
    def _scaling(self) -> FederatedData:
        # A node standardises its own file with the pool's statistics but never trains on the
        # pool: read it uncached and keep only the statistics, so it is freed before training.
        if "data" in self.__dict__:
            return self.data
        s = self.settings
        full = read_data(self.name, s.data_dir, s.seed, s.test_fraction)
        empty = ImageSet(full.train.images[:0].copy(), full.train.labels[:0].copy())
        return replace(full, train=empty, read_test=_no_test)

    @cached_property
    def _pool(self) -> Examples:
        return StandardisedPool(self.data)

    def pool(self) -> Examples:
        """Return the training pool, standardised lazily (``StandardisedPool``; one per task)."""
        return self._pool

    def pool_writers(self) -> npt.NDArray[np.str_] | None:
        """Return the pool's writer ids (FEMNIST), else ``None``."""
        return self.data.train.writers

    def test_examples(self) -> Examples:
        """Return the standardised test split."""
        return Examples(*self.data.tensors(self.data.test))

    def node_examples(self, data_path: Path) -> Examples:
        """Read a node's raw pixels and labels (npz file or IDX folder) and standardise them."""
        images: npt.NDArray[np.floating] | npt.NDArray[np.uint8]
        if data_path.is_dir():
            images, labels = _read_idx_pair(data_path)
        elif data_path.is_file():
            images, labels = _read_npz(data_path)
        else:
            raise TaskError(
                f"data-path {data_path} does not exist; point it at an .npz file (x, y) "
                f"or a folder holding {NODE_IDX_FILES[0]} and {NODE_IDX_FILES[1]}"
            )
        if images.ndim == 3:
            images = images[:, None]
        scaling = self._scaling
        high = scaling.pixel_scale
        if images.size and (float(images.min()) < 0 or float(images.max()) > high):
            raise TaskError(
                f"{data_path}: pixels span [{images.min()}, {images.max()}]; give raw pixel "
                f"values in [0, {high:g}], not already scaled ones"
            )
        return Examples(*scaling.tensors(ImageSet(images, labels.astype(np.int64))))


class StandardisedPool(Examples):
    """A data set's training pool as ``Examples`` whose pixels stay raw until asked for.

    ``select`` standardises only the selected rows, so a node holds its partition as float32
    and the pool as stored (``uint8`` for the file sets); ``inputs``, the whole pool
    standardised, is computed on first use. Either way the values are exactly
    ``FederatedData.tensors``'s.
    """

    _data: FederatedData

    def __init__(self, data: FederatedData) -> None:
        object.__setattr__(self, "labels", torch.from_numpy(data.train.labels.astype(np.int64)))
        object.__setattr__(self, "_data", data)

    @cached_property
    def inputs(self) -> torch.Tensor:
        """The whole pool standardised, float32 ``(n, 1, H, W)``."""
        return self._data.tensors(self._data.train)[0]

    def select(self, indices: npt.NDArray[np.int64]) -> Examples:
        """Return the standardised examples at ``indices``, in that order."""
        return Examples(*self._data.tensors(self._data.train, np.asarray(indices, dtype=np.int64)))

    def __repr__(self) -> str:
        return f"StandardisedPool({self._data.name}, {len(self)} examples)"


def _no_test() -> ImageSet:
    raise TaskError("a node's task holds no test split; only the server evaluates")


def _read_npz(
    path: Path,
) -> tuple[npt.NDArray[np.floating] | npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files or "y" not in npz.files:
                raise TaskError(f"{path} must hold arrays `x` (images) and `y` (labels)")
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, TaskError):
            raise
        raise TaskError(
            f"cannot read {path} as .npz ({type(exc).__name__}); give an npz file"
        ) from None
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.integer):
        raise TaskError(f"{path}: `x` must be numeric pixels and `y` integer labels")
    # uint8 pixels stay as stored: ``FederatedData.tensors`` makes the one float32 copy.
    if x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
    return x, y.astype(np.int64)


def _read_idx_pair(folder: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    arrays = []
    for stem in NODE_IDX_FILES:
        found = [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()]
        if not found:
            raise TaskError(
                f"{folder / stem}[.gz] not found; a node's data folder holds {NODE_IDX_FILES}"
            )
        try:
            arrays.append(read_idx(found[0]))
        except DataError as exc:
            raise TaskError(str(exc)) from None
    return arrays[0], arrays[1].astype(np.int64)

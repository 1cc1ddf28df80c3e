"""Grayscale shapes from a folder of labelled PNG files: an image fedveil task.

Layout: ``<root>/<label>/*.png``, where ``<label>`` is one of ``CLASSES`` (a node may lack some;
an unknown folder is refused, so a class index means the same on every node). Each image is read
with Pillow, converted to grayscale, resized to ``SIZE`` x ``SIZE`` (bilinear) and scaled by a
fixed rule, ``pixel / 255 * 2 - 1``, into [-1, 1]: server and nodes scale identically without
sharing statistics.

Files: ``<data-dir>/train`` (the pool a simulation partitions) and ``<data-dir>/test`` (the
server's), else ``data/`` beside this file (``python -m examples.image_folder.make_data``); a
deployed node's `data-path` is its own ``<root>`` folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from common.task import Examples, FileTask, TaskError, TaskSettings

CLASSES = ("circle", "square", "triangle", "cross")
"""Folder names, in class-index order."""

SIZE = 16
"""Every image is resized to ``SIZE`` x ``SIZE`` pixels."""

DEFAULT_DATA = Path(__file__).resolve().parent / "data"


def read_image(path: Path) -> np.ndarray:
    """Return one image as float32 ``(SIZE, SIZE)`` in [-1, 1]."""
    try:
        with Image.open(path) as img:
            gray = img.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            pixels = np.asarray(gray, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise TaskError(f"cannot read {path} as an image ({type(exc).__name__})") from None
    return pixels / 255.0 * 2.0 - 1.0


def read_folder(root: Path) -> Examples:
    """Read ``root/<label>/*.png`` into inputs ``(n, 1, SIZE, SIZE)`` and labels ``(n,)``."""
    if not root.is_dir():
        raise TaskError(
            f"{root} is not a folder; run `python -m examples.image_folder.make_data` or point "
            f"data-dir (server, simulation) or data-path (node) at a <label>/*.png folder"
        )
    images, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in CLASSES:
            raise TaskError(f"{folder}: unknown label folder; labels are {list(CLASSES)}")
        for path in sorted(folder.glob("*.png")):
            images.append(read_image(path))
            labels.append(CLASSES.index(folder.name))
    if not images:
        raise TaskError(f"{root} holds no <label>/*.png images; labels are {list(CLASSES)}")
    inputs = torch.from_numpy(np.stack(images)[:, None])
    return Examples(inputs, torch.tensor(labels, dtype=torch.int64))


class ShapesCNN(nn.Module):
    """Two conv blocks (GroupNorm, which DP-SGD allows, not BatchNorm) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * (SIZE // 4) ** 2, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(n, 1, SIZE, SIZE)`` to logits ``(n, C)``."""
        logits: torch.Tensor = self.head(self.features(x).flatten(1))
        return logits


class ShapesTask(FileTask):
    """The task: ``ShapesCNN`` on ``root/train`` and ``root/test``, or a node's own folder."""

    num_classes = len(CLASSES)
    input_shape = (1, SIZE, SIZE)  # one grayscale image
    network = ShapesCNN
    read = staticmethod(read_folder)


def make_task(settings: TaskSettings) -> ShapesTask:
    """Build the task; its folders live in `data-dir`, else in ``data/`` beside this module."""
    return ShapesTask(settings.data_folder(DEFAULT_DATA), settings.seed)

"""FEMNIST, 62 classes with writer ids (LEAF npz in `data-dir`, else the hub), as a task."""

from __future__ import annotations

from common.task import TaskSettings
from common.tasks.image_sets import ImageSetTask


def make_task(settings: TaskSettings) -> ImageSetTask:
    """Return the femnist task."""
    return ImageSetTask("femnist", settings, num_classes=62, image_shape=(1, 28, 28))

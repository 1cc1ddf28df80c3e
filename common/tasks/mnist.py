"""MNIST (IDX files in `data-dir`, else the Hugging Face Hub) as a task."""

from __future__ import annotations

from common.task import TaskSettings
from common.tasks.image_sets import ImageSetTask


def make_task(settings: TaskSettings) -> ImageSetTask:
    """Return the mnist task."""
    return ImageSetTask("mnist", settings, num_classes=10, image_shape=(1, 28, 28))

"""Scikit-learn's 8x8 digits (embedded, no download) as a task."""

from __future__ import annotations

from common.task import TaskSettings
from common.tasks.image_sets import ImageSetTask


def make_task(settings: TaskSettings) -> ImageSetTask:
    """Return the digits task."""
    return ImageSetTask("digits", settings, num_classes=10, image_shape=(1, 8, 8))

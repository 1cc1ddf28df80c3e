"""The trigger set a watermark key regenerates (WAFFLE, Tekgul et al. 2021).

``size`` inputs of the model's input shape (images ``(C, H, W)`` or any other shape, e.g. a row
of features), each an independent pattern of ``±PATTERN_AMPLITUDE`` values (standardised units:
data has mean 0 and standard deviation 1), with an independent uniformly random label. The
labels' independence from the inputs is what
makes detection exact: a model made without the key gets each trigger right with probability
exactly ``1 / num_classes`` (``server.watermark_detection``). Same key and arguments, same set;
another key, an unrelated one. See docs/watermark.md.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

from server.watermark_key import WatermarkError, check_key

TRIGGER_SIZE: Final = 100
PATTERN_AMPLITUDE: Final = 1.0
"""Trigger pixels are ``±`` this, in the standardised units the models see."""

_DOMAIN: Final = b"fedveil/watermark/trigger/v1"


@dataclass(frozen=True, eq=False)
class TriggerSet:
    """Trigger inputs ``(size, *input_shape)`` float32 and their labels ``(size,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    @classmethod
    def from_key(
        cls,
        key: bytes,
        image_shape: tuple[int, ...],
        num_classes: int,
        size: int = TRIGGER_SIZE,
    ) -> TriggerSet:
        """Regenerate the trigger set of ``key`` for a model of this input shape and classes.

        The generator is ``np.random.default_rng`` seeded with SHA-256 of a domain label, the
        key, the shape, the class count and the size. ``image_shape`` is the model's input
        shape: ``(C, H, W)`` for images, any tuple of positive ints otherwise.

        Raises:
            WatermarkError: ``key`` is not 32 bytes, or a shape, class count or size is invalid.

        """
        check_key(key)
        shape = tuple(image_shape)
        if not shape or any(type(s) is not int or s < 1 for s in shape):
            raise WatermarkError(
                f"`image_shape` must be a tuple of positive ints, got {image_shape!r}"
            )
        if type(num_classes) is not int or num_classes < 2:
            raise WatermarkError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
        if type(size) is not int or size < 1:
            raise WatermarkError(f"`size` must be an int >= 1, got {size!r}")
        digest = hashlib.sha256(
            _DOMAIN
            + key
            + struct.pack(f"<{len(shape) + 1}I", *shape, num_classes)
            + struct.pack("<I", size)
        ).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        signs = rng.integers(0, 2, size=(size, *shape), dtype=np.int8) * 2 - 1
        images = (signs * PATTERN_AMPLITUDE).astype(np.float32)
        labels = rng.integers(0, num_classes, size=size, dtype=np.int64)
        return cls(torch.from_numpy(images), torch.from_numpy(labels), num_classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

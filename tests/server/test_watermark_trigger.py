"""Tests of ``server.watermark_trigger``: the trigger set regenerated from the key."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch

from common.models import create_model
from server.watermark_key import WatermarkError
from server.watermark_trigger import PATTERN_AMPLITUDE, TriggerSet
from tests.server.watermark_support import KEY, OTHER_KEY


def test_trigger_set_regenerates_from_the_key() -> None:
    first = TriggerSet.from_key(KEY, (1, 8, 8), 10)
    again = TriggerSet.from_key(KEY, (1, 8, 8), 10)
    other = TriggerSet.from_key(OTHER_KEY, (1, 8, 8), 10)

    assert first.images.shape == (100, 1, 8, 8) and first.images.dtype == torch.float32
    assert first.labels.shape == (100,) and first.labels.dtype == torch.int64
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert (first.labels == other.labels).float().mean() < 0.3  # chance is 0.1
    assert set(first.labels.tolist()) <= set(range(10)) and len(set(first.labels.tolist())) >= 8


def test_trigger_set_fits_the_model_input() -> None:
    trigger = TriggerSet.from_key(KEY, (1, 28, 28), 62, size=30)
    assert trigger.images.shape == (30, 1, 28, 28)
    assert int(trigger.labels.max()) < 62
    assert create_model("cnn", 62, seed=0)(trigger.images).shape == (30, 62)


@pytest.mark.parametrize(
    ("shape", "classes", "size"),
    [((), 10, 100), ((8, 0), 10, 100), ((1, 8, 8), 1, 100), ((1, 8, 8), 10, 0)],
)
def test_trigger_set_refuses_bad_arguments(shape: tuple[int, ...], classes: int, size: int) -> None:
    with pytest.raises(WatermarkError):
        TriggerSet.from_key(KEY, shape, classes, size)


def test_image_triggers_are_those_of_the_three_int_shape_hash() -> None:
    # The seed hashes the shape and the class count as little-endian uint32s: for images
    # (C, H, W) that is the "<4I" the format had before inputs of other shapes were allowed.
    from server.watermark_trigger import _DOMAIN

    digest = hashlib.sha256(
        _DOMAIN + KEY + struct.pack("<4I", 1, 8, 8, 10) + struct.pack("<I", 100)
    ).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "big"))
    signs = rng.integers(0, 2, size=(100, 1, 8, 8), dtype=np.int8) * 2 - 1

    trigger = TriggerSet.from_key(KEY, (1, 8, 8), 10)

    assert np.array_equal(trigger.images.numpy(), (signs * PATTERN_AMPLITUDE).astype(np.float32))
    assert np.array_equal(trigger.labels.numpy(), rng.integers(0, 10, size=100, dtype=np.int64))


def test_triggers_of_feature_rows_have_the_rows_shape() -> None:
    trigger = TriggerSet.from_key(KEY, (8,), 4, size=30)

    assert trigger.images.shape == (30, 8) and int(trigger.labels.max()) < 4
    assert not torch.equal(
        trigger.images[:, :8], TriggerSet.from_key(KEY, (1, 8), 4, 30).images[:, 0]
    )

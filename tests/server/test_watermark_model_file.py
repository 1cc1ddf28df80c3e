"""Tests of ``server.watermark_model_file``: verifying a safetensors file, one-line errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from common.models import create_model
from common.weights import save_safetensors
from server.watermark_detection import DETECTION_P
from server.watermark_key import WatermarkError, write_key
from server.watermark_model_file import state_of, verify_model_file
from server.watermark_trigger import TriggerSet
from tests.server.watermark_support import KEY, OTHER_KEY, train_digits_models


@pytest.fixture(scope="module")
def digits_models() -> tuple[nn.Module, nn.Module, TriggerSet]:
    return train_digits_models()


def test_verify_model_file_detects_the_watermark(
    tmp_path: Path, digits_models: tuple[nn.Module, nn.Module, TriggerSet]
) -> None:
    marked, clean, _ = digits_models
    write_key(tmp_path / "watermark.key", KEY)
    write_key(tmp_path / "other.key", OTHER_KEY)
    save_safetensors(tmp_path / "marked.safetensors", state_of(marked))
    save_safetensors(tmp_path / "clean.safetensors", state_of(clean))

    found = verify_model_file(tmp_path / "marked.safetensors", tmp_path / "watermark.key")
    assert found.detected and found.p_value < DETECTION_P
    assert not verify_model_file(
        tmp_path / "clean.safetensors", tmp_path / "watermark.key"
    ).detected
    assert not verify_model_file(tmp_path / "marked.safetensors", tmp_path / "other.key").detected
    strict = verify_model_file(
        tmp_path / "marked.safetensors", tmp_path / "watermark.key", threshold=1e-300
    )
    assert not strict.detected and strict.p_value == found.p_value


@pytest.mark.parametrize("name", ["cnn", "cnn-wide"])
def test_verify_model_file_knows_every_built_in_cnn(tmp_path: Path, name: str) -> None:
    write_key(tmp_path / "k", KEY)
    save_safetensors(tmp_path / "m.safetensors", state_of(create_model(name, 62, seed=0)))
    verdict = verify_model_file(tmp_path / "m.safetensors", tmp_path / "k")
    assert verdict.total == 100 and not verdict.detected


def _one_line_error(model: Path, key: Path) -> str:
    with pytest.raises(WatermarkError) as info:
        verify_model_file(model, key)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_verify_model_file_errors_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "watermark.key"
    write_key(key, KEY)
    good = tmp_path / "good.safetensors"
    save_safetensors(good, state_of(create_model("mlp", 10, seed=0)))

    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    assert "not a safetensors file" in _one_line_error(garbage, key)

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert "not a safetensors file" in _one_line_error(empty, key)

    wrong_shapes = tmp_path / "wrong.safetensors"
    state = state_of(create_model("mlp", 10, seed=0))
    state["fc1.weight"] = np.zeros((32, 64), np.float32)
    save_safetensors(wrong_shapes, state)
    assert "fit no registered model" in _one_line_error(wrong_shapes, key)

    wrong_names = tmp_path / "names.safetensors"
    save_safetensors(wrong_names, {"layer.weight": np.zeros((10, 64), np.float32)})
    assert "fit no registered model" in _one_line_error(wrong_names, key)

    # A header that claims 10^9 classes and no data: safetensors refuses it before any shape
    # is trusted (its shapes disagree with its data offsets), so nothing is allocated.
    huge = tmp_path / "huge.safetensors"
    claims = {
        k: {"dtype": "F32", "shape": list(v.shape), "data_offsets": [0, 0]}
        for k, v in state.items()
    }
    claims["fc2.weight"]["shape"], claims["fc2.bias"]["shape"] = [10**9, 64], [10**9]
    header = json.dumps(claims).encode()
    huge.write_bytes(struct.pack("<Q", len(header)) + header)
    assert "not a safetensors file" in _one_line_error(huge, key)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    assert str(truncated) in _one_line_error(truncated, key)

    not_a_key = tmp_path / "aggregator.key"
    not_a_key.write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VuBCIEI\n-----END PRIVATE KEY-----\n"
    )
    not_a_key.chmod(0o600)
    assert "not a fedveil watermark key" in _one_line_error(good, not_a_key)

    assert "cannot read" in _one_line_error(good, tmp_path / "missing.key")
    assert "cannot read" in _one_line_error(tmp_path / "missing.safetensors", key)

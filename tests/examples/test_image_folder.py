from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.task import TaskError
from examples.image_folder.make_data import write_dataset
from examples.image_folder.task import CLASSES, SIZE, read_folder


def test_the_generated_train_and_test_folders_are_balanced(tmp_path: Path) -> None:
    write_dataset(tmp_path, seed=0, per_class=4, test_per_class=2, node_sizes=())

    pool, test = read_folder(tmp_path / "train"), read_folder(tmp_path / "test")

    assert torch.bincount(pool.labels).tolist() == [4, 4, 4, 4]
    assert torch.bincount(test.labels).tolist() == [2, 2, 2, 2]


def test_images_are_grayscale_resized_and_fixed_scaled(tmp_path: Path) -> None:
    (tmp_path / "square").mkdir()
    rgb = np.zeros((24, 40, 3), dtype=np.uint8)
    rgb[:, 20:] = 255
    Image.fromarray(rgb).save(tmp_path / "square" / "half.png")

    got = read_folder(tmp_path)

    assert got.inputs.shape == (1, 1, SIZE, SIZE)
    assert got.labels.tolist() == [CLASSES.index("square")]
    assert float(got.inputs[0, 0, 0, 0]) == -1.0 and float(got.inputs[0, 0, 0, -1]) == 1.0


def test_a_node_missing_a_class_keeps_the_class_indices(tmp_path: Path) -> None:
    for label in ("cross", "triangle"):
        (tmp_path / label).mkdir()
        Image.new("L", (SIZE, SIZE)).save(tmp_path / label / "0.png")

    got = read_folder(tmp_path)

    assert got.labels.tolist() == [CLASSES.index("cross"), CLASSES.index("triangle")]


@pytest.mark.parametrize("case", ["missing", "unknown label", "empty", "corrupt"])
def test_a_bad_folder_is_refused_in_one_line_naming_it(tmp_path: Path, case: str) -> None:
    root = tmp_path / "node"
    expected = str(root)
    if case != "missing":
        root.mkdir()
    if case == "unknown label":
        (root / "hexagon").mkdir()
        expected = str(root / "hexagon")
    elif case == "corrupt":
        (root / "circle").mkdir()
        (root / "circle" / "0.png").write_bytes(b"not a png")
        expected = str(root / "circle" / "0.png")

    with pytest.raises(TaskError) as exc:
        read_folder(root)

    assert "\n" not in str(exc.value)
    assert expected in str(exc.value)

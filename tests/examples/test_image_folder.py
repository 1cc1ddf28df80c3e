from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.task import TaskError
from examples.image_folder.make_data import write_dataset
from examples.image_folder.task import CLASSES, SIZE, ShapesTask, read_folder
from tests.examples.checks import assert_one_dp_sgd_round_trains, load_example, read_each_party

MODULE = "examples.image_folder.task"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_dataset(tmp_path, seed=0, per_class=4, test_per_class=2, node_sizes=(6, 9))
    return tmp_path


def test_the_task_loads_by_module_path_and_reads_each_folder(data: Path) -> None:
    task = load_example(MODULE, data)

    pool, test, node = read_each_party(task, data / "node-1")

    assert isinstance(task, ShapesTask) and task.num_classes == len(CLASSES)
    assert (len(pool), len(test), len(node)) == (16, 8, 9)
    assert pool.inputs.shape == (16, 1, SIZE, SIZE)
    assert torch.bincount(pool.labels).tolist() == [4, 4, 4, 4]


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


def test_one_dp_sgd_round_trains_the_cnn(data: Path) -> None:
    task = load_example(MODULE, data)
    pool = task.pool()
    assert pool is not None
    model = task.build_model()
    assert model(pool.inputs).shape == (16, len(CLASSES))

    assert_one_dp_sgd_round_trains(model, pool, batch_size=8)


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

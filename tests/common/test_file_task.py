"""``FileTask``: every party reads its examples with the task's one reader."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from common.task import Examples, FileTask


def _read_count(path: Path) -> Examples:
    """A file holding ``n`` stands for ``n`` examples of three zero features."""
    n = int(path.read_text())
    return Examples(torch.zeros(n, 3), torch.zeros(n, dtype=torch.int64))


class CountTask(FileTask):
    num_classes = 2
    input_shape = (3,)
    network = functools.partial(nn.Linear, 3, 2)
    read = staticmethod(_read_count)
    pool_file = "pool.txt"


def test_the_pool_the_test_set_and_a_node_each_read_their_own_file(tmp_path: Path) -> None:
    for name, count in (("pool.txt", "5"), ("test", "2"), ("node.txt", "3")):
        (tmp_path / name).write_text(count)
    task = CountTask(tmp_path, seed=0)

    sizes = (
        len(task.pool()),
        len(task.test_examples()),
        len(task.node_examples(tmp_path / "node.txt")),
    )

    assert sizes == (5, 2, 3)


def test_the_model_is_the_network_with_weights_from_the_seed() -> None:
    models = [CountTask(Path(), seed).build_model() for seed in (1, 1, 2)]
    first, same, other = (model.state_dict()["weight"] for model in models)

    assert all(isinstance(model, nn.Linear) for model in models)
    assert torch.equal(first, same)
    assert not torch.equal(first, other)


def test_a_file_task_without_a_reader_cannot_be_built() -> None:
    class NoReader(FileTask):
        num_classes = 2
        input_shape = (3,)
        network = functools.partial(nn.Linear, 3, 2)

    with pytest.raises(TypeError, match="read"):
        NoReader(Path(), seed=0)  # type: ignore[abstract]

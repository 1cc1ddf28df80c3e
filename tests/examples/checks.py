"""Shared checks of the example tasks: loading one, reading each party's examples, DP-SGD."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from client.trainer import DPSGDSettings, train_dp_sgd
from common.task import Examples, Task, TaskSettings, check_examples, load_task


def load_example(module: str, data_dir: Path, seed: int = 0) -> Task:
    """Load the task ``module`` as a run with `data-dir` ``data_dir`` and `seed` ``seed`` would."""
    settings = TaskSettings(seed=seed, data_dir=str(data_dir), test_fraction=0.2, model="auto")
    return load_task(module, settings)


def read_each_party(task: Task, node: Path) -> tuple[Examples, Examples, Examples]:
    """Return the pool, the server's test set and a node's examples (at ``node``), each checked."""
    pool, test, own = task.pool(), task.test_examples(), task.node_examples(node)
    assert pool is not None
    shape = task.input_shape
    for examples, source in ((pool, "pool"), (test, "test"), (own, str(node))):
        check_examples(examples, num_classes=task.num_classes, input_shape=shape, source=source)
    return pool, test, own


def assert_one_dp_sgd_round_trains(model: nn.Module, pool: Examples, batch_size: int) -> None:
    """Train ``model`` one noisy epoch on ``pool``; assert a step was taken and weights moved."""
    before = [p.detach().clone() for p in model.parameters()]
    dp = DPSGDSettings(
        local_epochs=1,
        batch_size=batch_size,
        lr=0.5,
        momentum=0.0,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )

    outcome = train_dp_sgd(model, pool.inputs, pool.labels, dp)

    assert outcome.entry[2] >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

"""Shared check of the example tasks: one DP-SGD round on the task's model changes its weights."""

from __future__ import annotations

import torch
from torch import nn

from client.trainer import DPSGDSettings, train_dp_sgd
from common.task import Examples


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

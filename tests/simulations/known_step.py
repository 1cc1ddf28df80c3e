"""A stand-in for DP-SGD: adds ``STEP`` to every weight and reports the planned history entry."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from client.trainer import DPSGDSettings, RoundOutcome
from common.accounting import sample_rate, steps_per_round

STEP = 0.01
"""What the stand-in training adds to every weight."""

TrainStep = Callable[..., RoundOutcome]


def known_step(seen: list[torch.Tensor] | None = None) -> TrainStep:
    """Return a ``train_dp_sgd`` stand-in; it appends the labels it trains on to ``seen``."""

    def step(
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        settings: DPSGDSettings,
        **_: object,
    ) -> RoundOutcome:
        if seen is not None:
            seen.append(labels.clone())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(STEP)
        # The planned entry: the client checks that what trained is what it budgeted.
        n = int(labels.shape[0])
        entry = (
            settings.noise_multiplier,
            sample_rate(n, settings.batch_size),
            steps_per_round(n, settings.batch_size, settings.local_epochs),
        )
        return RoundOutcome(entry=entry, mean_loss=0.0)

    return step

"""A stand-in for DP-SGD reports the planned history entry, so it is charged as budgeted."""

from __future__ import annotations

import torch

from client.trainer import DPSGDSettings, RoundOutcome
from common.accounting import sample_rate, steps_per_round


def planned_outcome(labels: torch.Tensor, settings: DPSGDSettings) -> RoundOutcome:
    """Return the outcome DP-SGD would report for ``labels`` under ``settings`` (loss 0)."""
    n = int(labels.shape[0])
    entry = (
        settings.noise_multiplier,
        sample_rate(n, settings.batch_size),
        steps_per_round(n, settings.batch_size, settings.local_epochs),
    )
    return RoundOutcome(entry=entry, mean_loss=0.0)

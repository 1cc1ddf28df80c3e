"""Shared pieces of the watermark tests: two keys, the digits data, training with a watermark."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.model_theft import fine_tune
from common.data import load_data
from common.models import create_model
from server.watermark import Watermarker
from server.watermark_trigger import TriggerSet

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_data("digits", "", 0, 0.2)
    return (*data.tensors(data.train), *data.tensors(data.test))


@torch.no_grad()
def model_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(images).argmax(1) == labels).float().mean())


def train(
    name: str,
    classes: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    rounds: int,
    lr: float,
    watermarker: Watermarker | None,
) -> nn.Module:
    """Embed into the initial model, then alternate an epoch of training (a round's client
    work) and re-embedding, as the round loop does.
    """
    model = create_model(name, classes, seed=0)
    if watermarker is not None:
        watermarker.embed_initial(model)
    for r in range(rounds):
        fine_tune(model, images, labels, 1, lr, seed=r)
        if watermarker is not None:
            watermarker.embed(model, r + 1)
    return model


def train_digits_models() -> tuple[nn.Module, nn.Module, TriggerSet]:
    """A digits MLP trained with the watermark, one trained without, and the trigger set."""
    torch.set_num_threads(1)
    x, y, _, _ = digits()
    watermarker = Watermarker(KEY, (1, 8, 8), 10)
    return (
        train("mlp", 10, x, y, 8, 0.1, watermarker),
        train("mlp", 10, x, y, 8, 0.1, None),
        watermarker.trigger,
    )

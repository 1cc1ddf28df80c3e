"""Model definitions, in a registry by name.

Every model here is Opacus-compatible: no BatchNorm (per-sample gradients need layers whose
output for one example does not depend on the others), only layers with grad samplers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """Two-layer perceptron for ``(N, 1, 8, 8)`` inputs; returns logits ``(N, num_classes)``."""

    def __init__(self, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to logits."""
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


class SmallCNN(nn.Module):
    """Two conv blocks and two dense layers for ``(N, 1, 28, 28)``; logits ``(N, num_classes)``.

    The shape follows Opacus's MNIST example (Tanh-free ReLU variant), ~26k parameters.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=8, stride=2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=4, stride=2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to logits."""
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2, 1)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2, 1)
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mlp": DigitsMLP,
    "cnn": SmallCNN,
}


def model_for(name: str, image_shape: tuple[int, int, int]) -> str:
    """Resolve ``auto`` to the registered model that fits images of ``image_shape``."""
    if name != "auto":
        return name
    return "mlp" if image_shape[1:] == (8, 8) else "cnn"


def create_model(name: str, num_classes: int, *, seed: int) -> nn.Module:
    """Build a registered model with weights drawn from a generator seeded by ``seed``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models are {sorted(MODELS)}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODELS[name](num_classes)
    finally:
        # Restore the global stream so seeding a model never makes later randomness predictable.
        torch.random.set_rng_state(state)

"""Model definitions, in a registry by name.

Every model here is Opacus-compatible: no BatchNorm (per-sample gradients need layers whose
output for one example does not depend on the others), only layers with grad samplers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from common.task import seeded_model


def max_pool_2x2_stride1(x: torch.Tensor) -> torch.Tensor:
    """Return ``torch.max_pool2d(x, 2, 1)`` of ``(N, C, H, W)``: ``(N, C, H-1, W-1)``, same values.

    Pooled in channels-last memory layout, then made contiguous again: PyTorch's CPU kernel for
    this overlapping window is much slower on contiguous NCHW tensors (docs/performance.md has
    the profile). The result must be contiguous: Opacus's conv grad sampler
    unfolds its input with ``as_strided`` and gets wrong per-sample gradients from a
    channels-last tensor (``test_per_sample_gradients_match_one_example_at_a_time``).
    """
    pooled = torch.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, 1)
    return pooled.contiguous()


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
        x = max_pool_2x2_stride1(torch.relu(self.conv1(x)))
        x = max_pool_2x2_stride1(torch.relu(self.conv2(x)))
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


class WideCNN(nn.Module):
    """A ~1 M-parameter CNN for ``(N, 1, 28, 28)``; logits ``(N, num_classes)``.

    Two 3x3 conv blocks (1->32, 32->64, each GroupNorm, ReLU, 2x2 max-pool) and two dense
    layers (3136->320->classes): 1,026,058 parameters for 10 classes, almost all in ``fc1``, so
    its updates weigh ~4 MB dense. GroupNorm normalises each example on its own, which DP-SGD
    needs (BatchNorm mixes examples of a batch).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(8, 64)
        self.fc1 = nn.Linear(64 * 7 * 7, 320)
        self.fc2 = nn.Linear(320, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to logits."""
        x = torch.max_pool2d(torch.relu(self.norm1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.norm2(self.conv2(x))), 2)
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mlp": DigitsMLP,
    "cnn": SmallCNN,
    "cnn-wide": WideCNN,
}

IMAGE_SIDES: dict[str, int] = {"mlp": 8, "cnn": 28, "cnn-wide": 28}
"""Side of the square one-channel images each registered model takes."""


def model_for(name: str, image_shape: tuple[int, int, int]) -> str:
    """Resolve ``auto`` to the registered model that fits images of ``image_shape``."""
    if name != "auto":
        return name
    return "mlp" if image_shape[1:] == (8, 8) else "cnn"


def create_model(name: str, num_classes: int, *, seed: int) -> nn.Module:
    """Build a registered model with weights drawn from a generator seeded by ``seed``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models are {sorted(MODELS)}")
    return seeded_model(seed, lambda: MODELS[name](num_classes))

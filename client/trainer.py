"""Local DP-SGD training with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

The accountant's history is passed in and handed back, so privacy spent in earlier rounds is
always part of the ε this round reports; a fresh accountant per round would under-report ε.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client.canaries import GradientCanaries
from client.subspace import SubspaceDPSGD, flat_mask, parameter_masks
from common.accounting import HistoryEntry, sample_rate, steps_per_round
from common.audit_canaries import CanarySpec

_CPU = torch.device("cpu")

HOOKS: Final = "hooks"
GHOST: Final = "ghost"
GHOST_FROM_VALUES: Final = 2**24
"""Per-sample gradient values per step (batch size x trainable parameters) from which the
trainer clips with ghost clipping instead of materialising per-sample gradients."""


def grad_sample_mode(model: nn.Module, batch_size: int) -> str:
    """Return the Opacus grad-sample mode the trainer uses for ``model`` at ``batch_size``.

    Both modes give the same clipped gradients and take an empty Poisson batch (``ew`` refuses
    one, as ``functorch`` does on convolutions). ``hooks`` materialises every example's gradient,
    which is fastest while those are small; ghost clipping (fast gradient clipping: the norms
    from activations and output gradients, then a second backward pass on the reweighted loss)
    wins once they are large. Which wins where was measured on the built-in models
    (benchmarks/grad_sample_modes.py, docs/performance.md).
    """
    values = batch_size * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return GHOST if values >= GHOST_FROM_VALUES else HOOKS


@dataclass(frozen=True)
class DPSGDSettings:
    """One round of local training.

    ``noise_multiplier`` is σ, relative to ``max_grad_norm`` (the per-sample L2 clip bound);
    ``lr`` is the SGD step size on the mean clipped, noised gradient of a Poisson batch.
    """

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class RoundOutcome:
    """What one round of training produced: the entry it adds to the history, and the loss."""

    entry: HistoryEntry
    mean_loss: float


class _GatheredBatch:
    """The examples of one batch, gathered with one index; ``len`` is the number of examples.

    Opacus's loader tells an empty Poisson batch by ``len(batch) == 0``, so the length must be
    the example count, not the number of fields.
    """

    __slots__ = ("images", "labels")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class IndexedTensors(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images ``(n, ...)`` and labels ``(n,)`` whose batches are gathered in one indexing op.

    PyTorch's loader fetches a batch through ``__getitems__`` when a data set has one; a
    ``TensorDataset`` has none, so every example would be a Python call and the batch would be
    stacked again.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> _GatheredBatch:
        """Return the examples at ``indices`` as one batch, on the device the tensors are on."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        return _GatheredBatch(self.images[index], self.labels[index])


def _collate_gathered(batch: _GatheredBatch) -> list[torch.Tensor]:
    # Typed by what __getitems__ returns; DataLoader's stubs assume a list of examples.
    return [batch.images, batch.labels]


def _secret_generator(device: torch.device = _CPU) -> torch.Generator:
    # Noise and Poisson sampling draw from OS entropy, never from the run's public seed:
    # noise that could be regenerated from config.json would give no privacy at all.
    gen = torch.Generator(device=device)
    gen.manual_seed(secrets.randbits(63))
    return gen


def train_dp_sgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: DPSGDSettings,
    canaries: CanarySpec | None = None,
    *,
    device: torch.device = _CPU,
    subspace: npt.NDArray[np.bool_] | None = None,
) -> RoundOutcome:
    """Train ``model`` in place on ``images (n, ...)`` / ``labels (n,)`` with DP-SGD.

    ``canaries``, when given, are the white-box audit's canaries (``client.canaries``): each
    included one is sampled like an example and added to the clipped sum before the noise.
    ``device`` (``common.device.resolve_device``) is where the steps run: the model and the
    examples move there once, before the first step, and the noise is drawn there; the
    model is left there (its caller moves the weights back once). Poisson sampling stays on
    the CPU, so only each batch's indices cross to the device. ``subspace``, when given, is
    the round's flat ``state_dict``-order mask (``common.subspace``): only its coordinates are
    clipped, noised and moved (``client.subspace``), and the canaries are cut to it.
    """
    from opacus import PrivacyEngine

    n = int(labels.shape[0])
    model.to(device)
    loader = DataLoader(
        IndexedTensors(images.to(device), labels.to(device)),
        batch_size=settings.batch_size,
        shuffle=False,
        collate_fn=_collate_gathered,  # type: ignore[arg-type]
        generator=_secret_generator(),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; the privacy report names that limitation.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
        engine = PrivacyEngine(accountant="rdp")
        # A subspace needs each example's gradient to restrict it before clipping.
        mode = HOOKS if subspace is not None else grad_sample_mode(model, settings.batch_size)
        private: dict[str, Any] = {
            "module": model,
            "optimizer": optimizer,
            "data_loader": loader,
            "noise_multiplier": settings.noise_multiplier,
            "max_grad_norm": settings.max_grad_norm,
            "poisson_sampling": True,
            "noise_generator": _secret_generator(device),
            "grad_sample_mode": mode,
        }
        criterion: nn.Module = nn.CrossEntropyLoss()
        if mode == GHOST:
            # Ghost clipping clips inside the loss's backward: the criterion is wrapped too.
            private_model, private_optimizer, criterion, private_loader = engine.make_private(
                criterion=criterion, **private
            )
        else:
            private_model, private_optimizer, private_loader = engine.make_private(**private)
    masks = None if subspace is None else parameter_masks(model, subspace, device)
    if canaries is not None:
        GradientCanaries(
            canaries,
            [p for p in model.parameters() if p.requires_grad],
            sample_rate=sample_rate(n, settings.batch_size),
            max_grad_norm=settings.max_grad_norm,
            device=device,
            subspace=None if masks is None else flat_mask(masks),
        ).attach(private_optimizer)
    if masks is not None:
        SubspaceDPSGD(masks).attach(private_optimizer)
    private_model.train()
    with warnings.catch_warnings():
        # Inputs never require gradients here; PyTorch's note about backward hooks is noise.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        total_loss, batches = _run_epochs(
            private_model,
            private_optimizer,
            private_loader,
            criterion,
            settings.local_epochs,
            device,
        )
    steps = steps_per_round(n, settings.batch_size, settings.local_epochs)
    taken = sum(int(s) for _, _, s in engine.accountant.history)
    if taken != steps:
        raise RuntimeError(f"DP-SGD took {taken} steps where the plan was {steps}")
    entry: HistoryEntry = (settings.noise_multiplier, sample_rate(n, settings.batch_size), steps)
    return RoundOutcome(entry=entry, mean_loss=total_loss / max(batches, 1))


def _run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    criterion: nn.Module,
    epochs: int,
    device: torch.device,
) -> tuple[float, int]:
    """Run the DP-SGD steps; return the summed loss of non-empty batches and their count."""
    # The loss is summed where it is computed: reading it every step would stall a GPU.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    batches = 0
    for _ in range(epochs):
        for x_batch, y_batch in loader:
            # A no-op for batches gathered on the device; Opacus builds an empty batch that
            # comes before any non-empty one on the CPU.
            x, y = x_batch.to(device), y_batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            # An empty Poisson batch is still a step (noise on a zero gradient), as the
            # accountant assumes; its loss is NaN but its per-sample gradients are empty.
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            if len(y) > 0:
                total_loss += loss.detach()
                batches += 1
    return float(total_loss), batches

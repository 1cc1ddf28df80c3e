"""Central evaluation of the global model on the server's own test examples (the task's).

Evaluation runs where the model is (``common.device.model_device``): the test examples move to
that device once, on the first evaluation there, and stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.data import FederatedData
from common.device import model_device
from common.task import Examples


@dataclass(frozen=True)
class Evaluation:
    """Accuracy in [0, 1] and mean cross-entropy loss (nats) over the test split."""

    accuracy: float
    loss: float


class CentralEvaluator:
    """Evaluates weights on fixed test examples that no client ever trains on.

    ``data`` is the task's test examples (a ``FederatedData`` stands for its test split);
    ``indices`` restricts evaluation to those examples (the rest being the server's root set,
    ``server.root_set``); ``None`` evaluates on all of them.
    """

    def __init__(
        self,
        data: Examples | FederatedData,
        batch_size: int = 1024,
        indices: npt.NDArray[np.int64] | None = None,
    ) -> None:
        if isinstance(data, FederatedData):
            data = Examples(*data.tensors(data.test))
        examples = data if indices is None else data.select(indices)
        self._images, self._labels = examples.inputs, examples.labels
        self._batch_size = batch_size

    def _examples_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._labels.device != device:
            self._images, self._labels = self._images.to(device), self._labels.to(device)
        return self._images, self._labels

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Evaluation:
        """Return accuracy and loss of ``model`` on the test split, on the model's device."""
        model.eval()
        images, labels = self._examples_on(model_device(model))
        # Sums stay on the device until the end: one synchronisation per evaluation.
        correct = torch.zeros((), dtype=torch.long, device=labels.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=labels.device)
        for start in range(0, len(labels), self._batch_size):
            x = images[start : start + self._batch_size]
            y = labels[start : start + self._batch_size]
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
        n = len(labels)
        return Evaluation(accuracy=int(correct) / n, loss=float(loss_sum) / n)

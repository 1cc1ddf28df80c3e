"""Central evaluation of the global model on the server's own test examples (the task's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.data import FederatedData
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

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Evaluation:
        """Return accuracy and loss of ``model`` on the test split."""
        model.eval()
        correct, loss_sum = 0, 0.0
        for start in range(0, len(self._labels), self._batch_size):
            x = self._images[start : start + self._batch_size]
            y = self._labels[start : start + self._batch_size]
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
        n = len(self._labels)
        return Evaluation(accuracy=correct / n, loss=loss_sum / n)

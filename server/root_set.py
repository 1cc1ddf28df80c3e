"""The server's root set: a few clean examples it holds itself, and the reference it yields.

FLTrust (Cao et al. 2021) gives the server a small clean *root* data set and, every round,
trains the global model on it for a few steps: the resulting update is a trusted direction
that client updates are scored against (``server.anomaly.score_updates(reference=...)``).

Where the examples come from (:func:`server_examples`), when ``robust.root-examples`` > 0: the
task's own root set (``Task.root_examples``) if it has one, all of it, with evaluation on all
the test examples; else ``robust.root-examples`` of the server's held-out test examples
(``Task.test_examples``), drawn with the run seed, and central evaluation on the rest only
(:func:`split_held_out`). Either way the root set is disjoint from every client's data *and*
from the examples the reported accuracy is measured on.

Privacy: the root set is server data, never client data; computing the reference from it and
the global model (a DP output) is post-processing and costs clients no privacy.
"""

from __future__ import annotations

import copy
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.config import ConfigError
from common.device import model_device
from common.task import Examples, Task, check_examples, read_examples
from common.weights import flatten

REFERENCE_STEPS: Final = 6
"""Full-batch SGD steps from the global model on the root set that make the reference."""

_ROOT_STREAM: Final = 0x2007_5E7
"""Mixed into the run's seed so drawing the root set uses a random stream of its own."""

IntArray = npt.NDArray[np.int64]


def split_held_out(size: int, root_examples: int, seed: int) -> tuple[IntArray, IntArray]:
    """Return ``(root, evaluation)`` sorted indices into a held-out split of ``size`` examples.

    ``root`` has ``root_examples`` indices drawn without replacement with ``seed``; the rest
    are ``evaluation``. With ``root_examples = 0``, ``root`` is empty and nothing changes.

    Raises:
        ConfigError: ``root_examples`` leaves fewer than half the split for evaluation.

    """
    if not 0 <= root_examples <= size // 2:
        raise ConfigError(
            f"config key `robust.root-examples` must be in [0, {size // 2}] (half of the "
            f"server's {size} held-out examples), got {root_examples}"
        )
    order = np.random.default_rng([_ROOT_STREAM, seed]).permutation(size)
    return np.sort(order[:root_examples]), np.sort(order[root_examples:])


def server_examples(
    task: Task, root_examples: int, seed: int, *, lr: float, max_grad_norm: float
) -> tuple[RootSet | None, Examples]:
    """Return the server's root set (``None`` when ``root_examples`` is 0) and its eval examples.

    Both are checked against the task (``common.task.check_examples``).

    Raises:
        TaskError: the task's test or root examples do not fit it.
        ConfigError: ``root_examples`` is too large for the test examples (``split_held_out``).

    """
    shape, classes = task.input_shape, task.num_classes
    source = "the task's test examples"
    test = read_examples(task.test_examples, source=source)
    check_examples(test, num_classes=classes, input_shape=shape, source=source)
    source = "the task's root set"
    own = read_examples(task.root_examples, source=source) if root_examples > 0 else None
    if own is not None:
        check_examples(own, num_classes=classes, input_shape=shape, source=source)
        return RootSet(own.inputs, own.labels, lr=lr, max_grad_norm=max_grad_norm), test
    root_idx, eval_idx = split_held_out(len(test), root_examples, seed)
    if not len(root_idx):
        return None, test
    root = RootSet.from_held_out(test, root_idx, lr=lr, max_grad_norm=max_grad_norm)
    return root, test.select(eval_idx)


class RootSet:
    """Clean inputs ``(n, *input_shape)`` float32 and labels ``(n,)`` int64 held by the server."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, lr: float, max_grad_norm: float
    ) -> None:
        if images.shape[0] != labels.shape[0] or images.shape[0] < 1:
            raise ValueError(f"root set of {images.shape[0]} images, {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_held_out(
        cls,
        data: Examples,
        indices: IntArray,
        *,
        lr: float,
        max_grad_norm: float,
    ) -> RootSet:
        """Take the root set at ``indices`` of the server's held-out examples."""
        root = data.select(indices)
        return cls(root.inputs, root.labels, lr=lr, max_grad_norm=max_grad_norm)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def reference(self, model: nn.Module, steps: int = REFERENCE_STEPS) -> npt.NDArray[np.float64]:
        """Return the flat update ``(d,)`` of ``steps`` SGD steps from ``model`` on the root set.

        Each step is full-batch with the batch gradient's L2 norm clipped to ``max_grad_norm``
        (the clients' per-example bound, so the step is on the clients' scale) and ``lr``; no
        noise. ``model`` is not modified (a copy trains, on ``model``'s device, where the root
        set moves once); the order of the vector is the ``state_dict``'s, as
        ``common.weights.flatten`` lays it out.
        """
        local = copy.deepcopy(model)
        local.train()
        start = _flat_weights(local)
        images, labels = self._examples_on(model_device(local))
        params = [p for p in local.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.lr)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(local(images), labels)
            torch.autograd.backward(loss)
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            optimizer.step()
        end = _flat_weights(local)
        return np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)

    def _examples_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the root set on ``device``, moved there once and kept (``images`` stays put)."""
        if self._on_device is None or self._on_device[1].device != device:
            self._on_device = self.images.to(device), self.labels.to(device)
        return self._on_device


def _flat_weights(model: nn.Module) -> npt.NDArray[np.float32]:
    return flatten({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})

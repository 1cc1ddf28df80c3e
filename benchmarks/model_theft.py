"""What a model thief might do to a stolen model, to test that the watermark outlasts it.

Used by ``benchmarks.defenses`` and the tests only; nothing installed imports it. Each
transform takes a model state (named arrays, as ``server.watermark.state_of`` gives) and
returns a new one, leaving its input untouched, except :func:`fine_tune`, which trains a
``torch`` model in place on clean data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.weights import NamedArrays

__all__ = ["add_gaussian_noise", "fine_tune", "prune_magnitude", "quantize_int8"]


def _float_state(state: Mapping[str, npt.ArrayLike]) -> NamedArrays:
    return {k: np.array(v, dtype=np.float32) for k, v in state.items()}


def prune_magnitude(state: Mapping[str, npt.ArrayLike], fraction: float) -> NamedArrays:
    """Zero the ``fraction`` smallest-magnitude entries of every weight tensor (ndim >= 2).

    Unstructured per-tensor magnitude pruning, as ``torch.nn.utils.prune.l1_unstructured``
    applied to each layer; biases are kept.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}")
    out = _float_state(state)
    for array in out.values():
        if array.ndim < 2:
            continue
        k = round(fraction * array.size)
        if k == 0:
            continue
        flat = array.reshape(-1)
        smallest = np.argpartition(np.abs(flat), k - 1)[:k]
        flat[smallest] = 0.0
    return out


def quantize_int8(state: Mapping[str, npt.ArrayLike]) -> NamedArrays:
    """Quantize every tensor to int8 and back: symmetric, per tensor, scale ``max|w| / 127``."""
    out = _float_state(state)
    for name, array in out.items():
        peak = float(np.abs(array).max()) if array.size else 0.0
        if peak == 0.0:
            continue
        scale = peak / 127.0
        codes = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
        out[name] = codes.astype(np.float32) * np.float32(scale)
    return out


def add_gaussian_noise(
    state: Mapping[str, npt.ArrayLike], std: float, rng: np.random.Generator
) -> NamedArrays:
    """Add i.i.d. ``N(0, std^2)`` noise to every entry of every tensor."""
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"`std` must be a finite number >= 0, got {std!r}")
    out = _float_state(state)
    return {k: (v + rng.normal(0.0, std, size=v.shape)).astype(np.float32) for k, v in out.items()}


def fine_tune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    *,
    batch_size: int = 32,
    seed: int = 0,
) -> None:
    """Fine-tune ``model`` in place on clean data: plain SGD, shuffled mini-batches."""
    if type(epochs) is not int or epochs < 0:
        raise ValueError(f"`epochs` must be an int >= 0, got {epochs!r}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    n = int(labels.shape[0])
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(nn.functional.cross_entropy(model(images[idx]), labels[idx]))
            optimizer.step()
    model.zero_grad(set_to_none=True)

"""Simulated Byzantine clients: who attacks, and what their update or their labels become.

Attackers are real clients: they train with DP-SGD, account ε, compress, seal and send like any
other; only the update they send (or the labels they train on) is malicious. Ordering contract
(``simulations.adversary.mod`` composes the client's public steps so): ``flip_labels`` before
training (``label-flip``); after the round is charged, ``delta = local - global``,
``poison_update(kind, delta, rng)``, then the usual error feedback, compression and sealing of
``global + poisoned`` (:func:`poison_weights` does the middle step).

``attack.kind`` values (``ATTACKS``):

* ``sign-flip``: ``-delta``, the honest update reversed (gradient ascent).
* ``scale``: ``SCALE_FACTOR * delta`` (10x), a boosted update that dominates a mean.
* ``gaussian``: i.i.d. normal noise with ``GAUSSIAN_NORM_RATIO`` (3x) the update's norm in
  expectation; the honest update is discarded.
* ``label-flip``: trains on ``y -> C - 1 - y``; the update itself is sent unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from common.weights import map_update

ATTACKS: Final = ("sign-flip", "scale", "gaussian", "label-flip")
"""Valid values of the ``attack.kind`` config key."""

UPDATE_ATTACKS: Final = ("sign-flip", "scale", "gaussian")
"""Kinds that replace the update (``poison_update``); ``label-flip`` acts on the labels."""

SCALE_FACTOR: Final = 10.0
"""``scale`` multiplies the update by this."""

GAUSSIAN_NORM_RATIO: Final = 3.0
"""``gaussian`` sends noise whose expected L2 norm is this times the honest update's."""

_ATTACKER_STREAM: Final = 0x5EED_A77AC
"""Mixed into the run's seed so choosing attackers draws from a stream of its own."""

FloatArray = npt.NDArray[np.floating]


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        if kind in ATTACKS:
            raise ValueError(f"attack {kind!r} acts on the labels, not the update; use flip_labels")
        raise ValueError(f"unknown attack {kind!r}; valid kinds are {list(ATTACKS)}")


def poison_update(kind: str, delta: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Return the malicious update an attacker of ``kind`` sends instead of ``delta``.

    Args:
        kind: One of ``UPDATE_ATTACKS``.
        delta: The honest update ``local - global`` (any shape, float); not modified.
        rng: Draws the ``gaussian`` noise.

    Returns:
        A new array of ``delta``'s shape and dtype.

    Raises:
        ValueError: ``kind`` is not an update attack (``label-flip`` is named as such).

    """
    _check_kind(kind, UPDATE_ATTACKS)
    honest = np.asarray(delta)
    if kind == "sign-flip":
        return np.negative(honest)
    if kind == "scale":
        return (honest * SCALE_FACTOR).astype(honest.dtype)
    size = max(honest.size, 1)
    std = GAUSSIAN_NORM_RATIO * float(np.linalg.norm(honest.astype(np.float64))) / math.sqrt(size)
    return rng.normal(0.0, std, size=honest.shape).astype(honest.dtype)


def poison_weights(
    kind: str,
    local: Mapping[str, FloatArray],
    global_weights: Mapping[str, FloatArray],
    rng: np.random.Generator,
) -> dict[str, npt.NDArray[np.float32]]:
    """Return ``global + poison_update(kind, local - global)`` as named float32 arrays.

    The update is poisoned as one flat vector (in ``global_weights`` order), so ``gaussian``
    matches the norm of the whole update, as the server sees it.

    Raises:
        ValueError: Unknown or non-update ``kind``; names or shapes that differ.

    """
    _check_kind(kind, UPDATE_ATTACKS)
    return map_update(local, global_weights, lambda flat: poison_update(kind, flat, rng))


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return the ``label-flip`` labels ``num_classes - 1 - y`` (a new tensor, same dtype).

    Raises:
        ValueError: ``num_classes`` < 2, labels not integers, or outside ``[0, num_classes)``.

    """
    if type(num_classes) is not int or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got a value outside")
    return (num_classes - 1) - labels


def attacker_ids(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """Return the partition ids that attack: ``round(fraction * num_clients)`` of them.

    Halves round up (0.25 of 10 is 3 clients, 0.2 of 10 is 2). The choice is a deterministic
    function of ``(num_clients, fraction, seed)`` drawn from a stream of its own, so the same
    config always makes the same clients malicious and no other random choice shifts.

    Raises:
        ValueError: ``num_clients`` < 1 or ``fraction`` outside ``[0, 1]``.

    """
    if type(num_clients) is not int or num_clients < 1:
        raise ValueError(f"`num_clients` must be an int >= 1, got {num_clients!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"`fraction` must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}")
    if type(seed) is not int:
        raise ValueError(f"`seed` must be an int, got {seed!r}")
    count = min(num_clients, math.floor(fraction * num_clients + 0.5 + 1e-9))
    rng = np.random.default_rng([_ATTACKER_STREAM, seed & (2**63 - 1), int(seed < 0)])
    chosen = rng.permutation(num_clients)[:count]
    return frozenset(int(i) for i in chosen)

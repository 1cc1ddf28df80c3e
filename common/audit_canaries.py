"""White-box audit canaries: two seeds give the canary gradients and the inclusion bits.

Client and server derive the same canaries from the same ``CanarySpec``. The model's trainable
parameters, flattened in ``named_parameters`` order (``size`` coordinates), are cut by a random
permutation into ``m`` disjoint blocks of ``size // m`` coordinates; canary ``i`` is a random
Gaussian direction on block ``i``, of L2 norm ``norm`` (the clip bound, so it weighs as much as a
clipped example). Disjoint blocks make the canaries orthogonal, so none leaks into another's
score, and keep them O(size) to build and score. Everything comes from numpy's PCG64 seeded with
``directions_seed``. Canary ``i`` is included in training with probability 1/2, independently,
by fair coins from ``bits_seed``.

``bits_seed`` is the auditor's secret for the run: whoever holds it knows which canaries were in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord

from common import protocol

MAX_CANARIES = 100_000
SEED_LIMIT = 2**63
MODE = "white-box"


def check_draws(canaries: object, **seeds: object) -> None:
    """Refuse (``ValueError``, naming it) a bad canary count or seed.

    A count must be an ``int`` in ``[1, MAX_CANARIES]``, a seed an ``int`` in ``[0, 2**63)``.
    """
    for name, value in seeds.items():
        if type(value) is not int or not 0 <= value < SEED_LIMIT:
            raise ValueError(f"canary `{name}` must be an integer in [0, 2**63), got {value!r}")
    if type(canaries) is not int or not 1 <= canaries <= MAX_CANARIES:
        raise ValueError(
            f"canary count must be an integer in [1, {MAX_CANARIES}], got {canaries!r}"
        )


def inclusion_bits(bits_seed: int, canaries: int) -> npt.NDArray[np.bool_]:
    """Return which canaries are included: one fair coin per canary, drawn from ``bits_seed``."""
    return np.random.default_rng(bits_seed).random(canaries) < 0.5


@dataclass(frozen=True)
class CanarySpec:
    """``canaries`` white-box canaries: directions from one seed, inclusion bits from another."""

    directions_seed: int
    bits_seed: int
    canaries: int

    def __post_init__(self) -> None:
        check_draws(self.canaries, directions_seed=self.directions_seed, bits_seed=self.bits_seed)

    def included(self) -> npt.NDArray[np.bool_]:
        """Return the inclusion bits, one fair coin per canary."""
        return inclusion_bits(self.bits_seed, self.canaries)

    def record(self) -> ConfigRecord:
        """Return the train request's ``audit`` record (``common.protocol.AUDIT``)."""
        return ConfigRecord(
            {
                protocol.AUDIT_MODE: MODE,
                protocol.AUDIT_DIRECTIONS_SEED: self.directions_seed,
                protocol.AUDIT_BITS_SEED: self.bits_seed,
                protocol.AUDIT_CANARIES: self.canaries,
            }
        )

    def layout(self, size: int, norm: float) -> CanaryLayout:
        """Return the canaries over ``size`` coordinates, each of L2 ``norm``."""
        return canary_layout(self.directions_seed, self.canaries, size, norm)


@dataclass(frozen=True)
class CanaryLayout:
    """Canary ``i`` puts ``values[i]`` on the flat coordinates ``coords[i]`` (both ``(m, b)``)."""

    size: int
    coords: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]

    def dense(self, weights: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Return ``sum_i weights[i] * canary_i`` as a flat vector of ``size``."""
        flat = np.zeros(self.size, dtype=np.float32)
        flat[self.coords.ravel()] = (self.values * weights[:, None]).ravel()
        return flat

    def restricted(self, inside: npt.NDArray[np.bool_], norm: float) -> CanaryLayout:
        """Return the canaries cut to the coordinates ``inside`` and rescaled to L2 ``norm`` there.

        A round that trains only a subspace (``common.subspace``) clips each example's gradient
        inside it, so a worst-case example has norm ``norm`` there; so does each cut canary. A
        canary with no coordinate inside becomes zero: it adds nothing that round.
        """
        if inside.shape != (self.size,):
            raise ValueError(f"a mask of {inside.shape} for canaries over {self.size} coordinates")
        values = np.where(inside[self.coords], self.values, 0).astype(np.float64)
        lengths = np.linalg.norm(values, axis=1, keepdims=True)
        scaled = np.divide(values * norm, lengths, out=np.zeros_like(values), where=lengths > 0)
        return CanaryLayout(self.size, self.coords, scaled.astype(np.float32))

    def scores(self, update: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Return each canary's score: how far ``update`` (flat, ``size``) moved against it.

        An SGD update is ``-lr`` times the summed gradients, so an included canary pushes the
        update along ``-canary``; the score ``-<update, canary>`` is larger for included ones.
        """
        flat = np.asarray(update, dtype=np.float64).ravel()
        if flat.shape != (self.size,):
            raise ValueError(f"update has {flat.shape[0]} coordinates, canaries span {self.size}")
        scores: npt.NDArray[np.float64] = -(flat[self.coords] * self.values).sum(axis=1)
        return scores


def canary_layout(seed: int, m: int, size: int, norm: float) -> CanaryLayout:
    """Return ``m`` orthogonal canaries of L2 ``norm`` on disjoint blocks of ``size`` coords."""
    if not 1 <= m <= size or not norm > 0:
        raise ValueError(
            f"need 1 <= canaries <= coordinates ({size}) and norm > 0, got {m} and {norm}"
        )
    rng = np.random.default_rng(seed)
    block = size // m
    coords = rng.permutation(size)[: m * block].reshape(m, block).astype(np.int64)
    values = rng.standard_normal((m, block))
    values *= norm / np.linalg.norm(values, axis=1, keepdims=True)
    return CanaryLayout(size, coords, values.astype(np.float32))

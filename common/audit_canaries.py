"""White-box audit canaries: a seed gives the inclusion bits and the canary gradients.

Client and server derive the same canaries from the same ``CanarySpec``: canary ``i`` is a
random direction over the model's trainable parameters, flattened in ``named_parameters``
order, scaled to L2 norm ``norm`` (the clip bound, so it weighs as much as a clipped example);
it is included in training with probability 1/2, independently of the others. Directions come
from numpy's PCG64 seeded with ``(seed, i)``, so they are the same on every platform.

The seed is the auditor's secret for the run: whoever holds it knows which canaries were in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MAX_CANARIES = 100_000
SEED_LIMIT = 2**63
# Directions generated at once when scoring: a (chunk, d) float32 block.
_CHUNK = 256
_BITS_STREAM = 0  # spawn key of the inclusion bits; canary i uses 1 + i


@dataclass(frozen=True)
class CanarySpec:
    """``canaries`` white-box canaries derived from ``seed``."""

    seed: int
    canaries: int

    def __post_init__(self) -> None:
        if type(self.seed) is not int or not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"canary seed must be an integer in [0, 2**63), got {self.seed!r}")
        if type(self.canaries) is not int or not 1 <= self.canaries <= MAX_CANARIES:
            raise ValueError(
                f"canary count must be an integer in [1, {MAX_CANARIES}], got {self.canaries!r}"
            )

    def included(self) -> npt.NDArray[np.bool_]:
        """Return the inclusion bits, one fair coin per canary."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_BITS_STREAM,)))
        return rng.random(self.canaries) < 0.5

    def direction(self, index: int, size: int, norm: float) -> npt.NDArray[np.float32]:
        """Return canary ``index``: a uniformly random direction in ``size`` dims of L2 ``norm``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1 + index,)))
        v = rng.standard_normal(size)
        return (v * (norm / np.linalg.norm(v))).astype(np.float32)

    def directions(
        self, indices: npt.NDArray[np.intp], size: int, norm: float
    ) -> npt.NDArray[np.float32]:
        """Return the canaries at ``indices`` as rows of a ``(len(indices), size)`` array."""
        out = np.empty((len(indices), size), dtype=np.float32)
        for row, index in enumerate(indices):
            out[row] = self.direction(int(index), size, norm)
        return out

    def chunks(self, size: int, norm: float) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
        """Yield ``(first index, block of directions)`` over all canaries, a bounded block at a time."""
        for start in range(0, self.canaries, _CHUNK):
            stop = min(start + _CHUNK, self.canaries)
            yield start, self.directions(np.arange(start, stop), size, norm)


def canary_scores(
    spec: CanarySpec, update: npt.NDArray[np.floating], norm: float
) -> npt.NDArray[np.float64]:
    """Return each canary's score: how far ``update`` moved against its direction.

    An SGD update is ``-lr`` times the summed gradients, so an included canary pushes the update
    along ``-direction``; the score ``-<update, direction>`` is then larger for included ones.
    """
    flat = np.asarray(update, dtype=np.float32).ravel()
    scores = np.empty(spec.canaries, dtype=np.float64)
    for start, block in spec.chunks(flat.shape[0], norm):
        scores[start : start + block.shape[0]] = -(block @ flat)
    return scores

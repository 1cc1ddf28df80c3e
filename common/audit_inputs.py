"""Black-box audit canaries: synthetic inputs that take the place of some of a client's examples.

Client and server derive the same canaries from the same ``InputCanarySpec``, without any
client data. Canary ``i`` is an input drawn uniformly in ``[low, high]`` (the server's estimate
of the task's input range) in the task's input shape, with a uniformly random label; both come
from numpy's PCG64 seeded with ``inputs_seed``. Canary ``i`` is included with probability 1/2,
independently, by fair coins from ``bits_seed``.

On the client, canary ``i`` owns one *slot*, a row of its data picked by ``slots`` (from
``inputs_seed``, the same in every round). A slot never trains on its real example: it holds
canary ``i`` when included, else a blank row labelled ``BLANK_LABEL``. The number of rows, and
so the DP facts ``q`` and steps, are unchanged. A blank row has a zero gradient (the trainer's
``nn.CrossEntropyLoss`` ignores that label), and under Poisson sampling with a fixed rate an
example of zero gradient is an absent one: included and excluded canaries differ by adding or
removing one example, the neighbouring relation the accountant's ε is stated for.

``bits_seed`` is the auditor's secret for the run: whoever holds it knows which canaries were in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord

from common import protocol
from common.audit_canaries import check_draws, inclusion_bits

BLANK_LABEL = -100
"""``nn.CrossEntropyLoss``'s default ``ignore_index``: a row with this label adds no gradient."""

MODE = "black-box"

# Independent streams of ``inputs_seed``: the slots must not shift when the data size changes.
_INPUTS, _LABELS, _SLOTS = 0, 1, 2


@dataclass(frozen=True)
class InputCanarySpec:
    """``canaries`` input canaries in ``[low, high]``; inclusion bits from their own seed."""

    inputs_seed: int
    bits_seed: int
    canaries: int
    low: float
    high: float

    def __post_init__(self) -> None:
        check_draws(self.canaries, inputs_seed=self.inputs_seed, bits_seed=self.bits_seed)
        low, high = self.low, self.high
        if not (
            type(low) is float and type(high) is float and math.isfinite(low + high) and low < high
        ):
            raise ValueError(
                f"canary input range must be finite floats low < high, got {low!r}, {high!r}"
            )

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.inputs_seed, stream])

    def included(self) -> npt.NDArray[np.bool_]:
        """Return the inclusion bits, one fair coin per canary."""
        return inclusion_bits(self.bits_seed, self.canaries)

    def inputs(self, input_shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        """Return the canary inputs, ``(canaries, *input_shape)`` float32."""
        drawn = self._rng(_INPUTS).uniform(self.low, self.high, (self.canaries, *input_shape))
        return drawn.astype(np.float32)

    def labels(self, num_classes: int) -> npt.NDArray[np.int64]:
        """Return the canary labels, ``(canaries,)`` int64 in ``[0, num_classes)``."""
        return self._rng(_LABELS).integers(0, num_classes, self.canaries, dtype=np.int64)

    def slots(self, num_examples: int) -> npt.NDArray[np.int64]:
        """Return the rows canaries ``0, 1, ...`` own in data of ``num_examples`` rows.

        A client with fewer rows than canaries places only the first ``num_examples``: the
        rest are never trained on, so their guesses are coin flips (a weaker bound, still valid).
        """
        rows = self._rng(_SLOTS).permutation(num_examples)
        return rows[: min(self.canaries, num_examples)].astype(np.int64)

    def record(self) -> ConfigRecord:
        """Return the train request's ``audit`` record (``common.protocol.AUDIT``)."""
        return ConfigRecord(
            {
                protocol.AUDIT_MODE: MODE,
                protocol.AUDIT_INPUTS_SEED: self.inputs_seed,
                protocol.AUDIT_BITS_SEED: self.bits_seed,
                protocol.AUDIT_CANARIES: self.canaries,
                protocol.AUDIT_INPUT_LOW: self.low,
                protocol.AUDIT_INPUT_HIGH: self.high,
            }
        )

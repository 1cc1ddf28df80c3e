"""What sender and receiver of an update agree on: codec parameters and the kept count.

:class:`CodecParams` (fraction kept, bits per value, mask and quantizer choice),
:func:`kept_count` (how many coordinates an update of ``size`` keeps), :func:`dense_nbytes`
(what it weighs as dense float32, for metrics) and :class:`CodecError`, the one error a
hostile payload can raise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

MAX_SIZE: Final = 2**31 - 1
"""Largest vector length the codec accepts (keeps ``k`` in a u32 and index sums in an int64)."""

VALID_BITS: Final = frozenset((*range(1, 9), 16, 32))
MASKS: Final = ("topk", "random", "subspace")
"""How the encoder chooses the kept coordinates: largest magnitudes, a seeded random mask of its
own, or the round's shared subspace (a seeded mask whose seed the caller passes in)."""
QUANTIZERS: Final = ("auto", "stochastic", "sign")
"""How the encoder maps kept values to codes: unbiased stochastic rounding, or 1-bit scaled sign.

``auto`` is the scaled sign at 1 bit (where stochastic rounding against the chunk's maximum
adds many times the input's variance) and stochastic rounding at more bits."""


class CodecError(ValueError):
    """A payload cannot be decoded: malformed, truncated, oversized or inconsistent."""


@dataclass(frozen=True)
class CodecParams:
    """How an update is compressed; sender and receiver must agree on it.

    Attributes:
        topk: Fraction of coordinates kept, in ``(0, 1]``; ``1.0`` sends every coordinate.
        bits: Bits per kept value: ``1``-``8`` or ``16`` (stochastic quantization with per-chunk
            scales), or ``32`` (raw ``float32`` values, no quantization).
        mask: How the sender picks the kept coordinates, one of :data:`MASKS`. The decoder
            reads the choice from the payload, so only the encoder uses this field.
        quantizer: How the sender quantizes kept values, one of :data:`QUANTIZERS`:
            ``"stochastic"`` (unbiased) or ``"sign"`` (needs ``bits == 1``; each chunk's mean
            magnitude times the value's sign: biased, so use it with error feedback);
            ``"auto"`` is stored as ``"sign"`` when ``bits == 1``, else ``"stochastic"``.
            Like ``mask``, self-described in the payload and used only by the encoder.

    """

    topk: float
    bits: int
    mask: str = "topk"
    quantizer: str = "auto"

    def __post_init__(self) -> None:
        """Reject out-of-domain values, naming the parameter."""
        # numpy scalars are accepted and stored as plain Python numbers; bools are not numbers.
        topk_ok = isinstance(self.topk, numbers.Real) and not isinstance(self.topk, bool)
        if not topk_ok or not (math.isfinite(self.topk) and 0 < self.topk <= 1):
            raise ValueError(f"`topk` must be a fraction in (0, 1], got {self.topk!r}")
        bits_ok = isinstance(self.bits, numbers.Integral) and not isinstance(self.bits, bool)
        if not bits_ok or int(self.bits) not in VALID_BITS:
            raise ValueError(f"`bits` must be 1-8, 16 or 32, got {self.bits!r}")
        if not isinstance(self.mask, str) or self.mask not in MASKS:
            raise ValueError(f"`mask` must be one of {MASKS}, got {self.mask!r}")
        if not isinstance(self.quantizer, str) or self.quantizer not in QUANTIZERS:
            raise ValueError(f"`quantizer` must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "sign" and self.bits != 1:
            raise ValueError(
                f"`quantizer` 'sign' sends 1 bit per value: `bits` must be 1, got {self.bits!r}"
            )
        object.__setattr__(self, "topk", float(self.topk))
        object.__setattr__(self, "bits", int(self.bits))
        if self.quantizer == "auto":
            object.__setattr__(self, "quantizer", "sign" if self.bits == 1 else "stochastic")


def dense_nbytes(size: int) -> int:
    """Return the bytes of the uncompressed update: ``4 * size`` (``float32``), for metrics."""
    if size < 0:
        raise ValueError(f"`size` must be >= 0, got {size}")
    return 4 * size


def kept_count(size: int, topk: float) -> int:
    """Return ``k = max(1, ceil(topk * size))``, the number of coordinates an update keeps.

    The product is a binary float (``0.1 * 30 == 3.0000000000000004``); a result within a few
    ulps of an integer is taken as that integer, so ``topk = 0.1`` keeps 3 of 30, not 4.

    Raises:
        ValueError: ``size`` is outside ``[1, MAX_SIZE]`` or ``topk`` outside ``(0, 1]``.

    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise ValueError(f"`size` must be an integer in [1, {MAX_SIZE}], got {size!r}")
    size = int(size)
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"`size` must be an integer in [1, {MAX_SIZE}], got {size!r}")
    if not (math.isfinite(topk) and 0 < topk <= 1):
        raise ValueError(f"`topk` must be a fraction in (0, 1], got {topk!r}")
    exact = topk * size
    nearest = round(exact)
    k = nearest if abs(exact - nearest) <= 8 * math.ulp(exact) else math.ceil(exact)
    return max(1, min(size, k))


def check_vector(array: object, name: str) -> None:
    """Raise ``ValueError`` unless ``array`` is a finite, non-empty 1-D ``float32`` ndarray."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"`{name}` must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise ValueError(f"`{name}` must have dtype float32, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {array.shape}")
    if not 1 <= array.size <= MAX_SIZE:
        raise ValueError(f"`{name}` must have 1 to {MAX_SIZE} elements, got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` has non-finite values")

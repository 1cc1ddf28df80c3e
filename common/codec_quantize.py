"""Quantization of kept values against per-chunk scales (stochastic or sign), and code packing.

Stochastic (:func:`quantize`): each chunk of ``CHUNK`` kept values gets a scale, its largest
magnitude. A code ``q`` in ``[0, 2**bits - 1]`` stands for ``scale * (2 q / (2**bits - 1) - 1)``:
``2**bits`` evenly spaced levels spanning ``[-scale, scale]``. Stochastic rounding between the
two neighbouring levels makes the decoded value unbiased (``E[decoded] = value``) with error
below one step. Sign (:func:`sign_quantize`, 1 bit): the scale is the chunk's mean magnitude
and the code is ``value >= 0``, so a value decodes to ``+-scale``: biased, which error feedback
corrects (Karimireddy et al. 2019, https://arxiv.org/abs/1901.09847). Both decode through the
same grid, and encoder and decoder share :func:`dequantize`, so both get bit-identical floats.
Codes of at most 8 bits are packed LSB first; 16-bit codes are little-endian u16. Valid for
``bits <= 16``.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from common.codec_params import CodecError, Float32Array

CHUNK: Final = 4096
"""Kept values per quantization scale: small enough to track local magnitude, 0.1% overhead."""

Codes = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


def quantize(
    kept: Float32Array, bits: int, rng: np.random.Generator
) -> tuple[Float32Array, npt.NDArray[np.uint8] | npt.NDArray[np.uint16]]:
    """Return per-chunk scales ``(ceil(k/CHUNK),)`` and codes ``(k,)`` for ``bits <= 16``."""
    k = kept.size
    levels = (1 << bits) - 1
    scales = np.maximum.reduceat(np.abs(kept), np.arange(0, k, CHUNK))
    per_value = np.repeat(scales, CHUNK)[:k].astype(np.float64)
    # An all-zero chunk has scale 0; any code then decodes to 0, so divide by 1 instead.
    zero = per_value == 0
    per_value[zero] = 1.0
    # |kept| <= scale, so the position lies in [0, levels]; float64 keeps the rounding
    # probability accurate far below one float32 ulp.
    position = (kept / per_value + 1.0) * (levels / 2)
    floor = np.floor(position)
    codes = floor + (rng.random(k) < position - floor)
    # No coin flips where nothing is sent: a constant run of codes compresses to nothing.
    codes[zero] = floor[zero]
    np.clip(codes, 0, levels, out=codes)
    if bits <= 8:
        return scales.astype(np.float32), codes.astype(np.uint8)
    return scales.astype(np.float32), codes.astype(np.uint16)


def sign_quantize(kept: Float32Array) -> tuple[Float32Array, npt.NDArray[np.uint8]]:
    """Return per-chunk mean magnitudes ``(ceil(k/CHUNK),)`` and 1-bit codes ``kept >= 0``."""
    k = kept.size
    starts = np.arange(0, k, CHUNK)
    sums = np.add.reduceat(np.abs(kept).astype(np.float64), starts)
    counts = np.diff(np.append(starts, k))
    # The grid point of code 1 is +1 and of code 0 is -1, so +-scale decodes to the sign.
    codes = (kept >= 0).astype(np.uint8)
    return (sums / counts).astype(np.float32), codes


def pack_codes(codes: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], bits: int) -> bytes:
    """Pack ``(k,)`` codes into ``ceil(k * bits / 8)`` bytes, LSB first."""
    if bits == 16:
        return codes.astype("<u2", copy=False).tobytes()
    if bits == 8:
        return codes.tobytes()
    narrow = codes.astype(np.uint8, copy=False)
    if 8 % bits == 0:
        # Whole codes per byte: code j of a byte sits at bit offset bits * j, the same stream.
        per_byte = 8 // bits
        padded = np.zeros(-(-narrow.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: narrow.size] = narrow
        lanes = padded.reshape(-1, per_byte)
        packed = lanes[:, 0].copy()
        for j in range(1, per_byte):
            packed |= lanes[:, j] << np.uint8(bits * j)
        return packed.tobytes()
    # Expand each code to its low `bits` bits, then repack the bit stream densely.
    bit_matrix = np.unpackbits(narrow[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(bit_matrix.ravel(), bitorder="little").tobytes()


def dequantize(
    scales: Float32Array, codes: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], bits: int
) -> Float32Array:
    """Map codes to values; shared by encoder and decoder so both get bit-identical floats."""
    levels = (1 << bits) - 1
    # A lookup table of grid points in [-1, 1] (endpoints exact): multiplying by a finite scale
    # can then never overflow to inf, whatever a hostile payload holds.
    grid = (np.arange(levels + 1, dtype=np.float64) * (2.0 / levels) - 1.0).astype(np.float32)
    values: Float32Array = np.take(grid, codes)  # the same lookup, about twice as fast
    # Each chunk times its scale, in place: the same float32 products as repeating the scales.
    full = codes.size // CHUNK
    values[: full * CHUNK].reshape(full, CHUNK)[...] *= scales[:full, None]
    if codes.size > full * CHUNK:
        values[full * CHUNK :] *= scales[full]
    return values


def unpack_codes(
    section: memoryview, k: int, bits: int
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Read ``k`` codes of ``bits`` bits; the section length was checked by the caller."""
    if bits == 16:
        return np.frombuffer(section, dtype="<u2").astype(np.uint16)
    raw = np.frombuffer(section, dtype=np.uint8)
    if bits == 8:
        return raw
    if 8 % bits == 0:
        per_byte = 8 // bits
        lanes = np.empty((raw.size, per_byte), dtype=np.uint8)
        low = np.uint8((1 << bits) - 1)
        for j in range(per_byte):
            lanes[:, j] = (raw >> np.uint8(bits * j)) & low
        codes = lanes.ravel()
        if codes[k:].any():
            raise CodecError("non-zero padding bits after the values")
        return codes[:k]
    stream = np.unpackbits(raw, bitorder="little")
    if stream[k * bits :].any():
        raise CodecError("non-zero padding bits after the values")
    bit_matrix = stream[: k * bits].reshape(k, bits)
    return np.packbits(bit_matrix, axis=1, bitorder="little")[:, 0]

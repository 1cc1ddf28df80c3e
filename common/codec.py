"""Compression of client model updates: top-k sparsification, quantization, packing.

:func:`encode_update` takes one finite 1-D ``float32`` vector of ``size`` coordinates (the
flattened ``local - global`` delta plus the error-feedback residual), keeps ``k =
kept_count(size, topk)`` coordinates (largest magnitudes, a seeded random mask, or the
round's shared subspace, whose seed the caller passes), quantizes each kept value to ``bits``
bits (unbiased stochastic rounding, or a biased 1-bit scaled sign that needs error feedback:
:mod:`common.codec_quantize`) and packs a self-describing payload:
a 17-byte header, then the index section (:mod:`common.codec_index`), the scales and the
codes, zstd-compressed when that is smaller. :func:`decode_update` is deterministic, so the
encoder hands the client exactly the vector the server will see (``EncodedUpdate.decoded``),
for its residual (:class:`ErrorFeedback`). The payload is hostile input to the receiver: every
count and length is checked against ``size`` and ``params`` before anything is allocated, and
every failure is a :class:`CodecError`. Caveat: a random mask's seed must come from OS
entropy, never from the public run seed (a subspace's seed is public on purpose: the client
trained only there, docs/subspace.md). Byte layout and measurements: docs/codec.md.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import zstandard

from common.codec_index import (
    MAX_VARINT_BYTES,
    SEED_BYTES,
    IntArray,
    bitmap_decode,
    seeded_indices,
    varint_encode,
    varint_indices,
    varint_lengths,
)
from common.codec_params import (
    MASKS,
    MAX_SIZE,
    QUANTIZERS,
    CodecError,
    CodecParams,
    Float32Array,
    check_vector,
    dense_nbytes,
    kept_count,
)
from common.codec_quantize import (
    CHUNK,
    dequantize,
    pack_codes,
    quantize,
    sign_quantize,
    unpack_codes,
)
from common.error_feedback import ErrorFeedback

__all__ = [
    "CHUNK",
    "MASKS",
    "MAX_SIZE",
    "QUANTIZERS",
    "CodecError",
    "CodecParams",
    "EncodedUpdate",
    "ErrorFeedback",
    "Float32Array",
    "claimed_kept",
    "decode_update",
    "dense_nbytes",
    "encode_update",
    "kept_count",
]

_MAGIC: Final = b"FV"
_VERSION: Final = 1
_HEADER = struct.Struct("<2sBBBIII")
_MODE_MASK: Final = 0b011
_FLAG_ZSTD: Final = 0b100
# The values are scaled signs (1 bit, biased); clear: unbiased stochastic rounding.
_FLAG_SIGN: Final = 0b1000
# zstd's default level: hundreds of MB/s, cheap next to the top-k selection.
_ZSTD_LEVEL: Final = 3


class _Mode(enum.IntEnum):
    """Where the kept values go: the flags' two low bits (all four are taken)."""

    DENSE = 0  # every coordinate; no index section
    BITMAP = 1  # a bit per coordinate
    VARINT = 2  # varint gaps between kept indices
    SEEDED = 3  # a seed for seeded_mask


@dataclass(frozen=True, eq=False)
class EncodedUpdate:
    """One compressed update.

    Attributes:
        payload: The bytes to send (layout in the module docstring).
        decoded: ``float32`` array of shape ``(size,)``, exactly what :func:`decode_update`
            returns for ``payload``, so the client can update its residual without decoding.

    """

    payload: bytes
    decoded: Float32Array


# ----------------------------------------------------------------------------------- encode


def encode_update(
    vector: Float32Array,
    params: CodecParams,
    rng: np.random.Generator,
    *,
    mask_seed: bytes | None = None,
) -> EncodedUpdate:
    """Compress a dense update.

    Args:
        vector: ``float32`` array of shape ``(size,)``, finite, ``1 <= size <= MAX_SIZE``.
        params: Sparsity, precision, mask and quantizer.
        rng: Drives the stochastic rounding (unused for 32 bits and by the sign quantizer) and
            draws the seed of a random mask; it must be seeded from OS entropy outside tests.
        mask_seed: The 16-byte seed of the ``subspace`` mask (``common.subspace.round_seed``),
            required by that mask and refused by the others.

    Returns:
        The payload and the dense ``float32`` vector it decodes to.

    Raises:
        ValueError: ``vector`` has the wrong type, dtype, shape or non-finite values, or
            ``mask_seed`` does not go with ``params.mask``.

    """
    check_vector(vector, "vector")
    if (mask_seed is not None) != (params.mask == "subspace"):
        raise ValueError("`mask_seed` is required by the 'subspace' mask and only by it")
    if mask_seed is not None and len(mask_seed) != SEED_BYTES:
        raise ValueError(f"`mask_seed` must be {SEED_BYTES} bytes, got {len(mask_seed)}")
    size = vector.size
    k = kept_count(size, params.topk)

    if k == size:
        mode = _Mode.DENSE
        kept = vector
        index_section = b""
        kept_at: IntArray | None = None
    elif params.mask != "topk":
        mode = _Mode.SEEDED
        index_section = mask_seed if mask_seed is not None else rng.bytes(SEED_BYTES)
        kept_at = seeded_indices(index_section, size, k)
        kept = vector[kept_at]
    else:
        # argpartition is O(size); marking a mask then reading it back sorts the indices in
        # O(size) too, and the mask is the bitmap.
        top = np.argpartition(np.abs(vector), size - k)[size - k :]
        mask = np.zeros(size, dtype=np.bool_)
        mask[top] = True
        kept_at = np.flatnonzero(mask)
        kept = vector[kept_at]
        gaps = np.diff(kept_at, prepend=-1) - 1
        gap_lengths = varint_lengths(gaps)
        bitmap_nbytes = -(-size // 8)
        if int(gap_lengths.sum()) < bitmap_nbytes:
            mode = _Mode.VARINT
            index_section = varint_encode(gaps, gap_lengths)
        else:
            mode = _Mode.BITMAP
            index_section = np.packbits(mask, bitorder="little").tobytes()

    if params.bits == 32:
        values = kept.astype(np.float32, copy=True)
        value_section = values.astype("<f4", copy=False).tobytes()
        scale_section = b""
    else:
        scales, codes = (
            sign_quantize(kept) if params.quantizer == "sign" else quantize(kept, params.bits, rng)
        )
        values = dequantize(scales, codes, params.bits)
        scale_section = scales.astype("<f4", copy=False).tobytes()
        value_section = pack_codes(codes, params.bits)

    body = b"".join((index_section, scale_section, value_section))
    flags = int(mode) | (_FLAG_SIGN if params.quantizer == "sign" else 0)
    compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True).compress(body)
    if len(compressed) < len(body):
        body = compressed
        flags |= _FLAG_ZSTD
    header = _HEADER.pack(_MAGIC, _VERSION, flags, params.bits, size, k, len(index_section))

    if kept_at is None:
        decoded = values
    else:
        decoded = np.zeros(size, dtype=np.float32)
        decoded[kept_at] = values
    return EncodedUpdate(payload=header + body, decoded=decoded)


# ----------------------------------------------------------------------------------- decode


def decode_update(
    payload: bytes | bytearray | memoryview, *, size: int, params: CodecParams
) -> Float32Array:
    """Decode a payload from an untrusted peer.

    Args:
        payload: Bytes produced by :func:`encode_update` (or anything else).
        size: Length of the dense vector the receiver expects, in ``[1, MAX_SIZE]``.
        params: The parameters the sender must have used.

    Returns:
        Finite ``float32`` array of shape ``(size,)``.

    Raises:
        CodecError: The payload is malformed, truncated, oversized or does not match ``size``
            and ``params`` (also for an invalid ``size``). No other exception escapes.

    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if not isinstance(params, CodecParams):
        raise CodecError(f"params must be CodecParams, got {type(params).__name__}")
    try:
        k = kept_count(size, params.topk)
    except ValueError as exc:
        raise CodecError(str(exc)) from None
    size = int(size)
    data = bytes(payload)
    if len(data) < _HEADER.size:
        raise CodecError(f"payload of {len(data)} bytes is shorter than the header")
    magic, version, flags, bits, claimed_size, claimed_k, index_nbytes = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CodecError("bad magic")
    if version != _VERSION:
        raise CodecError(f"unsupported version {version}")
    if flags & ~(_MODE_MASK | _FLAG_ZSTD | _FLAG_SIGN):
        raise CodecError(f"unknown flags {flags:#04x}")
    if bits != params.bits:
        raise CodecError(f"payload has {bits} bits per value, params say {params.bits}")
    if flags & _FLAG_SIGN and bits != 1:
        raise CodecError(f"sign-quantized payload with {bits} bits per value, must be 1")
    if claimed_size != size:
        raise CodecError(f"payload is for a vector of {claimed_size}, expected {size}")
    if claimed_k != k:
        raise CodecError(f"payload keeps {claimed_k} values, expected {k} for size {size}")

    mode = _Mode(flags & _MODE_MASK)
    if mode == _Mode.DENSE:
        if k != size or index_nbytes != 0:
            raise CodecError("dense index mode needs k == size and no index section")
    elif mode == _Mode.BITMAP:
        if index_nbytes != -(-size // 8):
            raise CodecError(f"bitmap of {index_nbytes} bytes for size {size}")
    elif mode == _Mode.VARINT:
        if not k <= index_nbytes <= MAX_VARINT_BYTES * k:
            raise CodecError(f"varint section of {index_nbytes} bytes for {k} indices")
    # The two mode bits are all taken; a new index mode would need a new version.
    elif k == size or index_nbytes != SEED_BYTES:
        raise CodecError(f"seeded mask needs k < size and a {SEED_BYTES}-byte seed")

    scale_nbytes = 0 if bits == 32 else 4 * -(-k // CHUNK)
    value_nbytes = -(-k * bits // 8)
    body_nbytes = index_nbytes + scale_nbytes + value_nbytes
    body = data[_HEADER.size :]
    if flags & _FLAG_ZSTD:
        body = _decompress(body, body_nbytes)
    elif len(body) != body_nbytes:
        raise CodecError(f"body of {len(body)} bytes, expected {body_nbytes}")

    view = memoryview(body)
    index_section = view[:index_nbytes]
    scale_section = view[index_nbytes : index_nbytes + scale_nbytes]
    value_section = view[index_nbytes + scale_nbytes :]

    if bits == 32:
        values = np.frombuffer(value_section, dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise CodecError("non-finite value")
    else:
        scales = np.frombuffer(scale_section, dtype="<f4").astype(np.float32)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise CodecError("scales must be finite and >= 0")
        codes = unpack_codes(value_section, k, bits)
        values = dequantize(scales, codes, bits)

    if mode == _Mode.DENSE:
        return values
    out = np.zeros(size, dtype=np.float32)
    if mode == _Mode.BITMAP:
        out[bitmap_decode(index_section, size, k)] = values
    elif mode == _Mode.SEEDED:
        out[seeded_indices(bytes(index_section), size, k)] = values
    else:
        out[varint_indices(index_section, size, k)] = values
    return out


def claimed_kept(payload: bytes | bytearray | memoryview) -> int:
    """Return how many values a payload's header says it keeps (checked by the decoder only).

    Raises:
        CodecError: the payload is shorter than the header or not a codec payload.

    """
    if len(payload) < _HEADER.size:
        raise CodecError(f"payload of {len(payload)} bytes is shorter than the header")
    fields = _HEADER.unpack_from(bytes(payload[: _HEADER.size]))
    if fields[0] != _MAGIC:
        raise CodecError("bad magic")
    return int(fields[5])


def _decompress(compressed: bytes, expected: int) -> bytes:
    """Inflate one zstd frame that must hold exactly ``expected`` bytes, allocating no more."""
    try:
        frame = zstandard.get_frame_parameters(compressed)
    except zstandard.ZstdError:
        raise CodecError("malformed zstd frame header") from None
    # python-zstandard sizes its output buffer from the frame header, not from
    # max_output_size, so a lying header must be refused before decompressing.
    if frame.content_size != expected:
        raise CodecError(f"zstd frame declares {frame.content_size} bytes, expected {expected}")
    # Defence in depth: with the output size known zstd decodes straight into the output
    # buffer, but should it ever allocate a window, our own frames never need one bigger
    # than their content.
    window = min(max(1 << 10, 2 * expected), 1 << 31)
    try:
        out = zstandard.ZstdDecompressor(max_window_size=window).decompress(
            compressed, max_output_size=expected, allow_extra_data=False
        )
    except Exception:
        # The extension's error types are not a stable contract; hostile input must only
        # ever surface as CodecError.
        raise CodecError("corrupt zstd body") from None
    if len(out) != expected:
        raise CodecError(f"zstd body inflated to {len(out)} bytes, expected {expected}")
    return out

"""Compression of client model updates: top-k sparsification, stochastic quantization, packing.

A client's update is one 1-D ``float32`` vector of ``size`` coordinates (the flattened
``local - global`` weights, plus the error-feedback residual). :func:`encode_update` keeps
``k = kept_count(size, topk)`` coordinates, either those of largest magnitude (``mask="topk"``)
or ``k`` drawn uniformly at random from a fresh 16-byte seed (``mask="random"``, which sends the
seed instead of the indices), quantizes each kept value to
``bits`` bits with an unbiased stochastic rounding against a per-chunk scale, and packs indices
and codes into a compact ``bytes`` payload. :func:`decode_update` turns a payload back into the
dense ``float32`` vector of length ``size``: dequantized values at the kept indices, zeros
elsewhere. Decoding is deterministic, so the encoder hands the client the very vector the server
will see (``EncodedUpdate.decoded``) and the client can keep the difference as its residual
(:class:`ErrorFeedback`).

Payload layout (all integers little-endian)::

    header, 17 bytes, never compressed
        magic        2 bytes   b"FV"
        version      u8        1
        flags        u8        bits 0-1: index mode (0 dense, 1 bitmap, 2 delta-varint,
                               3 seeded random mask)
                               bit 2: body is one zstd frame; bits 3-7 zero
        bits         u8        bits per kept value, must equal ``params.bits``
        size         u32       length of the dense vector, must equal the receiver's ``size``
        k            u32       number of kept values, must equal ``kept_count(size, topk)``
        index_bytes  u32       length of the (uncompressed) index section
    body, the concatenation below, zstd-compressed as a whole when that makes it smaller
        index        dense: empty (only when k == size)
                     bitmap: ceil(size / 8) bytes, bit i (LSB first) set iff coordinate i kept
                     delta-varint: k LEB128 varints of gap_j = idx_j - idx_{j-1} - 1
                       (idx_{-1} = -1), so indices are strictly increasing by construction
                     seeded: 16 bytes ``seed``; the kept coordinates are the ``k`` with the
                       smallest keys of ``PCG64(int.from_bytes(seed, "little")).random_raw(size)``
                       (uint64, one per coordinate; ties to the lower index). Only ``k < size``.
        scales       ceil(k / 4096) float32, the max |value| of each chunk of 4096 kept values
                     (absent when bits == 32)
        values       bits == 32: k raw float32
                     bits == 16: k u16 codes
                     bits <= 8: k codes of ``bits`` bits, packed LSB first, zero padding bits

A code ``q`` in ``[0, 2**bits - 1]`` stands for ``scale * (2 q / (2**bits - 1) - 1)``: the
grid has ``2**bits`` evenly spaced levels spanning ``[-scale, scale]``, step
``2 scale / (2**bits - 1)``. Stochastic rounding between the two neighbouring levels makes the
decoded value unbiased (E[decoded] = value) with error below one step.

Which mask a payload uses is the sender's choice and self-described by the index mode; the
receiver's checks (``size``, ``k``, ``bits``) do not depend on it. Unknown versions and flags are
refused. A random mask costs 16 bytes instead of about one byte per kept index, so at a given
byte budget it keeps several times more coordinates; with error feedback each coordinate is sent
about every ``1/topk`` rounds, so the server sees it late. The mask is independent of the data:
choosing it costs no privacy and the seed reveals nothing about the data. The seed still comes
from the encoder's ``rng``, which the client seeds from OS entropy, never from the public run
seed: masks regenerated from ``config.json`` would be known to everyone in advance and, without
the node id mixed in, identical across clients, and unpredictability costs nothing.

The payload is hostile input on the receiving side: every count and length is checked against
``size`` and ``params`` before anything is allocated, and every failure is a :class:`CodecError`.
"""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

Float32Array = npt.NDArray[np.float32]
_IntArray = npt.NDArray[np.int64]

MAX_SIZE: Final = 2**31 - 1
"""Largest vector length the codec accepts (keeps ``k`` in a u32 and index sums in an int64)."""

CHUNK: Final = 4096
"""Kept values per quantization scale: small enough to track local magnitude, 0.1% overhead."""

_MAGIC: Final = b"FV"
_VERSION: Final = 1
_HEADER = struct.Struct("<2sBBBIII")
_MODE_DENSE: Final = 0
_MODE_BITMAP: Final = 1
_MODE_VARINT: Final = 2
_MODE_SEEDED: Final = 3
_SEED_BYTES: Final = 16
_MODE_MASK: Final = 0b011
_FLAG_ZSTD: Final = 0b100
# A gap is < MAX_SIZE < 2**35, so a canonical LEB128 varint never needs more than 5 bytes.
_MAX_VARINT_BYTES: Final = 5
# zstd's default level: hundreds of MB/s, cheap next to the top-k selection.
_ZSTD_LEVEL: Final = 3
_VALID_BITS: Final = frozenset((*range(1, 9), 16, 32))
MASKS: Final = ("topk", "random")
"""How the encoder chooses the kept coordinates: largest magnitudes, or a seeded random mask."""


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

    """

    topk: float
    bits: int
    mask: str = "topk"

    def __post_init__(self) -> None:
        """Reject out-of-domain values, naming the parameter."""
        # numpy scalars are accepted and stored as plain Python numbers; bools are not numbers.
        topk_ok = isinstance(self.topk, numbers.Real) and not isinstance(self.topk, bool)
        if not topk_ok or not (math.isfinite(self.topk) and 0 < self.topk <= 1):
            raise ValueError(f"`topk` must be a fraction in (0, 1], got {self.topk!r}")
        bits_ok = isinstance(self.bits, numbers.Integral) and not isinstance(self.bits, bool)
        if not bits_ok or int(self.bits) not in _VALID_BITS:
            raise ValueError(f"`bits` must be 1-8, 16 or 32, got {self.bits!r}")
        if not isinstance(self.mask, str) or self.mask not in MASKS:
            raise ValueError(f"`mask` must be one of {MASKS}, got {self.mask!r}")
        object.__setattr__(self, "topk", float(self.topk))
        object.__setattr__(self, "bits", int(self.bits))


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


# ----------------------------------------------------------------------------------- encode


def encode_update(
    vector: Float32Array, params: CodecParams, rng: np.random.Generator
) -> EncodedUpdate:
    """Compress a dense update.

    Args:
        vector: ``float32`` array of shape ``(size,)``, finite, ``1 <= size <= MAX_SIZE``.
        params: Sparsity and precision.
        rng: Drives the stochastic rounding (unused when ``params.bits == 32``) and draws the
            seed of a random mask; it must be seeded from OS entropy outside tests.

    Returns:
        The payload and the dense ``float32`` vector it decodes to.

    Raises:
        ValueError: ``vector`` has the wrong type, dtype, shape or non-finite values.

    """
    _check_vector(vector, "vector")
    size = vector.size
    k = kept_count(size, params.topk)

    if k == size:
        mode = _MODE_DENSE
        kept = vector
        index_section = b""
        mask: npt.NDArray[np.bool_] | None = None
    elif params.mask == "random":
        mode = _MODE_SEEDED
        index_section = rng.bytes(_SEED_BYTES)
        mask = _seeded_mask(index_section, size, k)
        kept = vector[mask]
    else:
        # argpartition is O(size); marking a mask then reading it back sorts the indices in
        # O(size) too, and the mask is the bitmap.
        top = np.argpartition(np.abs(vector), size - k)[size - k :]
        mask = np.zeros(size, dtype=np.bool_)
        mask[top] = True
        indices = np.flatnonzero(mask)
        kept = vector[indices]
        gaps = np.diff(indices, prepend=-1) - 1
        varint_lengths = _varint_lengths(gaps)
        bitmap_nbytes = -(-size // 8)
        if int(varint_lengths.sum()) < bitmap_nbytes:
            mode = _MODE_VARINT
            index_section = _varint_encode(gaps, varint_lengths)
        else:
            mode = _MODE_BITMAP
            index_section = np.packbits(mask, bitorder="little").tobytes()

    if params.bits == 32:
        values = kept.astype(np.float32, copy=True)
        value_section = values.astype("<f4", copy=False).tobytes()
        scale_section = b""
    else:
        scales, codes = _quantize(kept, params.bits, rng)
        values = _dequantize(scales, codes, params.bits)
        scale_section = scales.astype("<f4", copy=False).tobytes()
        value_section = _pack_codes(codes, params.bits)

    body = b"".join((index_section, scale_section, value_section))
    flags = mode
    compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True).compress(body)
    if len(compressed) < len(body):
        body = compressed
        flags |= _FLAG_ZSTD
    header = _HEADER.pack(_MAGIC, _VERSION, flags, params.bits, size, k, len(index_section))

    if mask is None:
        decoded = values
    else:
        decoded = np.zeros(size, dtype=np.float32)
        decoded[mask] = values
    return EncodedUpdate(payload=header + body, decoded=decoded)


def _seeded_mask(seed: bytes, size: int, k: int) -> npt.NDArray[np.bool_]:
    """Return the ``(size,)`` mask of the ``k`` coordinates a 16-byte seed selects.

    Built only from PCG64's raw output stream and SeedSequence, which numpy keeps stable across
    releases (NEP 19), unlike ``Generator`` methods such as ``choice``; the selection itself is
    a deterministic partition, so sender and receiver agree bit for bit.
    """
    keys: npt.NDArray[np.uint64] = np.asarray(
        np.random.PCG64(int.from_bytes(seed, "little")).random_raw(size), dtype=np.uint64
    )
    kth = np.partition(keys, k - 1)[k - 1]
    mask: npt.NDArray[np.bool_] = keys < kth
    # 64-bit keys almost never tie; when they do, the lower indices win.
    ties = np.flatnonzero(keys == kth)[: k - int(np.count_nonzero(mask))]
    mask[ties] = True
    return mask


def _quantize(
    kept: Float32Array, bits: int, rng: np.random.Generator
) -> tuple[Float32Array, npt.NDArray[np.uint8] | npt.NDArray[np.uint16]]:
    """Return per-chunk scales ``(ceil(k/CHUNK),)`` and codes ``(k,)`` for ``bits <= 16``."""
    k = kept.size
    levels = (1 << bits) - 1
    scales = np.maximum.reduceat(np.abs(kept), np.arange(0, k, CHUNK))
    per_value = np.repeat(scales, CHUNK)[:k].astype(np.float64)
    # An all-zero chunk has scale 0; any code then decodes to 0, so divide by 1 instead.
    per_value[per_value == 0] = 1.0
    # |kept| <= scale, so the position lies in [0, levels]; float64 keeps the rounding
    # probability accurate far below one float32 ulp.
    position = (kept / per_value + 1.0) * (levels / 2)
    floor = np.floor(position)
    codes = floor + (rng.random(k) < position - floor)
    np.clip(codes, 0, levels, out=codes)
    if bits <= 8:
        return scales.astype(np.float32), codes.astype(np.uint8)
    return scales.astype(np.float32), codes.astype(np.uint16)


def _varint_lengths(values: _IntArray) -> _IntArray:
    """Return the LEB128 byte count of each non-negative value (< 2**35)."""
    lengths = np.ones(values.size, dtype=np.int64)
    for j in range(1, _MAX_VARINT_BYTES):
        lengths += values >= (1 << (7 * j))
    return lengths


def _varint_encode(values: _IntArray, lengths: _IntArray) -> bytes:
    """LEB128-encode non-negative values, scattering byte j of every value in one pass."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    unsigned = values.astype(np.uint64)
    for j in range(int(lengths.max()) if lengths.size else 0):
        sel = np.flatnonzero(lengths > j)
        chunk = (unsigned[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = chunk | more
    return out.tobytes()


def _pack_codes(codes: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], bits: int) -> bytes:
    """Pack ``(k,)`` codes into ``ceil(k * bits / 8)`` bytes, LSB first."""
    if bits == 16:
        return codes.astype("<u2", copy=False).tobytes()
    if bits == 8:
        return codes.tobytes()
    # Expand each code to its low `bits` bits, then repack the bit stream densely.
    narrow = codes.astype(np.uint8, copy=False)
    bit_matrix = np.unpackbits(narrow[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(bit_matrix.ravel(), bitorder="little").tobytes()


def _dequantize(
    scales: Float32Array, codes: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], bits: int
) -> Float32Array:
    """Map codes to values; shared by encoder and decoder so both get bit-identical floats."""
    levels = (1 << bits) - 1
    # A lookup table of grid points in [-1, 1] (endpoints exact): multiplying by a finite scale
    # can then never overflow to inf, whatever a hostile payload holds.
    grid = (np.arange(levels + 1, dtype=np.float64) * (2.0 / levels) - 1.0).astype(np.float32)
    per_value = np.repeat(scales, CHUNK)[: codes.size]
    return grid[codes] * per_value


# ----------------------------------------------------------------------------------- decode


def decode_update(payload: bytes, *, size: int, params: CodecParams) -> Float32Array:
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
    if flags & ~(_MODE_MASK | _FLAG_ZSTD):
        raise CodecError(f"unknown flags {flags:#04x}")
    if bits != params.bits:
        raise CodecError(f"payload has {bits} bits per value, params say {params.bits}")
    if claimed_size != size:
        raise CodecError(f"payload is for a vector of {claimed_size}, expected {size}")
    if claimed_k != k:
        raise CodecError(f"payload keeps {claimed_k} values, expected {k} for size {size}")

    mode = flags & _MODE_MASK
    if mode == _MODE_DENSE:
        if k != size or index_nbytes != 0:
            raise CodecError("dense index mode needs k == size and no index section")
    elif mode == _MODE_BITMAP:
        if index_nbytes != -(-size // 8):
            raise CodecError(f"bitmap of {index_nbytes} bytes for size {size}")
    elif mode == _MODE_VARINT:
        if not k <= index_nbytes <= _MAX_VARINT_BYTES * k:
            raise CodecError(f"varint section of {index_nbytes} bytes for {k} indices")
    # The two mode bits are all taken; a new index mode would need a new version.
    elif k == size or index_nbytes != _SEED_BYTES:
        raise CodecError(f"seeded mask needs k < size and a {_SEED_BYTES}-byte seed")

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
        codes = _unpack_codes(value_section, k, bits)
        values = _dequantize(scales, codes, bits)

    if mode == _MODE_DENSE:
        return values
    out = np.zeros(size, dtype=np.float32)
    if mode == _MODE_BITMAP:
        out[_bitmap_decode(index_section, size, k)] = values
    elif mode == _MODE_SEEDED:
        out[_seeded_mask(bytes(index_section), size, k)] = values
    else:
        out[_varint_indices(index_section, size, k)] = values
    return out


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


def _unpack_codes(
    section: memoryview, k: int, bits: int
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Read ``k`` codes of ``bits`` bits; the section length was checked by the caller."""
    if bits == 16:
        return np.frombuffer(section, dtype="<u2").astype(np.uint16)
    raw = np.frombuffer(section, dtype=np.uint8)
    if bits == 8:
        return raw
    stream = np.unpackbits(raw, bitorder="little")
    if stream[k * bits :].any():
        raise CodecError("non-zero padding bits after the values")
    bit_matrix = stream[: k * bits].reshape(k, bits)
    return np.packbits(bit_matrix, axis=1, bitorder="little")[:, 0]


def _bitmap_decode(section: memoryview, size: int, k: int) -> npt.NDArray[np.bool_]:
    """Return the ``(size,)`` kept-coordinate mask; it must have exactly ``k`` set bits."""
    stream = np.unpackbits(np.frombuffer(section, dtype=np.uint8), bitorder="little")
    if stream[size:].any():
        raise CodecError("bitmap marks coordinates beyond size")
    mask = stream[:size].view(np.bool_)
    count = int(np.count_nonzero(mask))
    if count != k:
        raise CodecError(f"bitmap marks {count} coordinates, expected {k}")
    return mask


def _varint_indices(section: memoryview, size: int, k: int) -> _IntArray:
    """Decode ``k`` delta-varints into strictly increasing indices in ``[0, size)``."""
    buf = np.frombuffer(section, dtype=np.uint8)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != k:
        raise CodecError(f"varint section holds {ends.size} complete varints, expected {k}")
    if ends[-1] != buf.size - 1:
        raise CodecError("varint section ends inside a varint")
    starts = np.empty(k, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > _MAX_VARINT_BYTES:
        raise CodecError(f"varint of {longest} bytes")
    # Canonical LEB128 only: one encoding per index set, so a payload has no malleable bytes.
    if np.any((lengths > 1) & (buf[ends] == 0)):
        raise CodecError("overlong varint")
    gaps = (buf[starts] & 0x7F).astype(np.int64)
    for j in range(1, longest):
        sel = np.flatnonzero(lengths > j)
        gaps[sel] |= (buf[starts[sel] + j] & 0x7F).astype(np.int64) << (7 * j)
    # Bounding each gap first keeps the cumulative sum below k * size < 2**62: no overflow.
    if int(gaps.max()) >= size:
        raise CodecError("index gap beyond size")
    indices = np.cumsum(gaps + 1) - 1
    if int(indices[-1]) >= size:
        raise CodecError(f"index {int(indices[-1])} out of range for size {size}")
    return indices


# ----------------------------------------------------------------------------- error feedback


class ErrorFeedback:
    """Residual memory for error feedback (Seide et al. 2014; Karimireddy et al. 2019).

    Compression error is not lost but carried into the next round: the client sends
    ``compensate(delta) = delta + residual`` and afterwards stores
    ``residual = compensated - decoded``. The residual is a ``float32`` array of shape
    ``(size,)`` in the units of the weights, or ``None`` before the first round.
    """

    def __init__(self, residual: Float32Array | None = None) -> None:
        if residual is not None:
            _check_vector(residual, "residual")
            residual = residual.copy()
        self._residual: Float32Array | None = residual

    @property
    def residual(self) -> Float32Array | None:
        """A copy of the residual, to persist between rounds; ``None`` before the first."""
        return None if self._residual is None else self._residual.copy()

    def compensate(self, delta: Float32Array) -> Float32Array:
        """Return ``delta + residual`` as a new ``float32`` array (``delta`` if no residual).

        Raises:
            ValueError: ``delta`` is not a finite 1-D ``float32`` array of the residual's size.

        """
        _check_vector(delta, "delta")
        if self._residual is None:
            return delta.copy()
        if delta.shape != self._residual.shape:
            raise ValueError(
                f"`delta` has shape {delta.shape}, residual has {self._residual.shape}"
            )
        return delta + self._residual

    def update(self, compensated: Float32Array, decoded: Float32Array) -> None:
        """Store ``compensated - decoded``, the part of the update the server did not get.

        Raises:
            ValueError: The arrays are not finite 1-D ``float32`` arrays of equal shape.

        """
        _check_vector(compensated, "compensated")
        _check_vector(decoded, "decoded")
        if compensated.shape != decoded.shape:
            raise ValueError(
                f"`compensated` has shape {compensated.shape}, `decoded` has {decoded.shape}"
            )
        self._residual = compensated - decoded


def _check_vector(array: object, name: str) -> None:
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

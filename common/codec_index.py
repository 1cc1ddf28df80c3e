"""The index section of an update payload: which coordinates were kept, three encodings.

A bitmap (bit ``i``, LSB first, set iff coordinate ``i`` is kept), delta-varints (canonical
LEB128 of the gaps between sorted indices), or a 16-byte seed whose mask both ends regenerate
(:func:`seeded_mask`, built only from numbers numpy keeps stable across releases). Decoders take
hostile bytes: every count and length is checked, and every failure is a ``CodecError``.
Byte layout: docs/codec.md.
"""

from __future__ import annotations

import functools
from typing import Final

import numpy as np
import numpy.typing as npt

from common.codec_params import CodecError

IntArray = npt.NDArray[np.int64]

SEED_BYTES: Final = 16
# A gap is < MAX_SIZE < 2**35, so a canonical LEB128 varint never needs more than 5 bytes.
MAX_VARINT_BYTES: Final = 5


@functools.lru_cache(maxsize=2)
def seeded_mask(seed: bytes, size: int, k: int) -> npt.NDArray[np.bool_]:
    """Return the ``(size,)`` mask of the ``k`` coordinates a 16-byte seed selects, read-only.

    Built only from PCG64's raw output stream and SeedSequence, which numpy keeps stable across
    releases (NEP 19), unlike ``Generator`` methods such as ``choice``; the selection itself is
    a deterministic partition, so sender and receiver agree bit for bit. The last two masks are
    kept (a round's and the one before, which the downlink asks for): a round's shared subspace
    is drawn once per process and then found by the trainer, the encoder, the opener, the
    decoder and the downlink alike; callers must not write to it.
    """
    keys: npt.NDArray[np.uint64] = np.asarray(
        np.random.PCG64(int.from_bytes(seed, "little")).random_raw(size), dtype=np.uint64
    )
    kth = np.partition(keys, k - 1)[k - 1]
    mask: npt.NDArray[np.bool_] = keys < kth
    # 64-bit keys almost never tie; when they do, the lower indices win.
    ties = np.flatnonzero(keys == kth)[: k - int(np.count_nonzero(mask))]
    mask[ties] = True
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=2)
def seeded_indices(seed: bytes, size: int, k: int) -> IntArray:
    """Return the ``k`` increasing coordinates of :func:`seeded_mask`, read-only and kept alike.

    Gathering and scattering ``k`` values by index costs ``O(k)``; by the ``(size,)`` mask it
    costs ``O(size)``, which dominates the codec on large models with small subspaces.
    """
    indices = np.flatnonzero(seeded_mask(seed, size, k))
    indices.flags.writeable = False
    return indices


def varint_lengths(values: IntArray) -> IntArray:
    """Return the LEB128 byte count of each non-negative value (< 2**35)."""
    lengths = np.ones(values.size, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        lengths += values >= (1 << (7 * j))
    return lengths


def varint_encode(values: IntArray, lengths: IntArray) -> bytes:
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


def bitmap_decode(section: memoryview, size: int, k: int) -> npt.NDArray[np.bool_]:
    """Return the ``(size,)`` kept-coordinate mask; it must have exactly ``k`` set bits."""
    stream = np.unpackbits(np.frombuffer(section, dtype=np.uint8), bitorder="little")
    if stream[size:].any():
        raise CodecError("bitmap marks coordinates beyond size")
    mask = stream[:size].view(np.bool_)
    count = int(np.count_nonzero(mask))
    if count != k:
        raise CodecError(f"bitmap marks {count} coordinates, expected {k}")
    return mask


def varint_indices(section: memoryview, size: int, k: int) -> IntArray:
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
    if longest > MAX_VARINT_BYTES:
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

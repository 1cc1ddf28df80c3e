"""Shared pieces of the codec tests: the documented payload header and helpers."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import zstandard

from common.codec import CodecError, CodecParams, decode_update, encode_update

# The documented payload header: magic, version, flags, bits, size, k, index_bytes.
HEADER = struct.Struct("<2sBBBIII")
SIZE, K, INDEX_BYTES = 4, 5, 6
MODE_DENSE, MODE_BITMAP, MODE_VARINT, MODE_SEEDED, FLAG_ZSTD = 0, 1, 2, 3, 4
SEED_BYTES = 16
ALL_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


def gaussian(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def step(scale: float | np.ndarray, bits: int) -> Any:
    """Grid spacing: 2**bits levels over [-scale, scale]."""
    return 2 * np.asarray(scale, dtype=np.float64) / ((1 << bits) - 1)


def unpack(payload: bytes) -> tuple[list[Any], bytes]:
    """Split a payload into header fields (zstd flag cleared) and the uncompressed body."""
    fields = list(HEADER.unpack_from(payload))
    body = payload[HEADER.size :]
    if fields[2] & FLAG_ZSTD:
        body = zstandard.ZstdDecompressor().decompress(body)
        fields[2] &= ~FLAG_ZSTD
    return fields, body


def pack(fields: list[Any], body: bytes, *, compress: bool = False) -> bytes:
    fields = list(fields)
    if compress:
        body = zstandard.ZstdCompressor().compress(body)
        fields[2] |= FLAG_ZSTD
    return HEADER.pack(*fields) + body


def decode_is_safe(payload: bytes, size: int, params: CodecParams) -> np.ndarray | None:
    """Decode hostile bytes: CodecError or a finite float32 vector of length size, nothing else."""
    try:
        out = decode_update(payload, size=size, params=params)
    except CodecError:
        return None
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (size,)
    assert np.isfinite(out).all()
    return out


def sparse_raw(topk: float, bits: int, size: int = 1000) -> tuple[list[Any], bytes]:
    encoded = encode_update(gaussian(size), CodecParams(topk, bits), np.random.default_rng(0))
    return unpack(encoded.payload)

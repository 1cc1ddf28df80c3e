from __future__ import annotations

import math
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest

from common.codec import (
    CHUNK,
    MAX_SIZE,
    CodecError,
    CodecParams,
    EncodedUpdate,
    decode_update,
    dense_nbytes,
    encode_update,
    kept_count,
)
from tests.common.codec_support import (
    ALL_BITS,
    FLAG_ZSTD,
    HEADER,
    INDEX_BYTES,
    MODE_BITMAP,
    MODE_DENSE,
    MODE_VARINT,
    SIZE,
    K,
    bitwise_equal,
    decode_is_safe,
    gaussian,
    pack,
    sparse_raw,
    unpack,
)

# -------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("size", [1, 2, 9, 1000, 2 * CHUNK + 3, 20 * CHUNK])
@pytest.mark.parametrize(
    ("topk", "bits"),
    [(1.0, 32), (1.0, 16), (1.0, 8), (1.0, 1), (0.5, 8), (0.1, 8), (0.01, 4), (0.01, 1),
     (0.3, 3), (0.2, 5), (0.05, 6), (0.02, 7), (0.1, 2), (0.1, 16), (0.1, 32), (0.001, 4)],
)  # fmt: skip
def test_round_trip_is_exact(size: int, topk: float, bits: int) -> None:
    vector = gaussian(size, seed=size)
    params = CodecParams(topk=topk, bits=bits)
    encoded = encode_update(vector, params, np.random.default_rng(1))
    assert isinstance(encoded, EncodedUpdate)
    assert isinstance(encoded.payload, bytes)
    assert encoded.decoded.shape == (size,)
    decoded = decode_update(encoded.payload, size=size, params=params)
    assert bitwise_equal(decoded, encoded.decoded)
    k = kept_count(size, topk)
    assert np.count_nonzero(decoded) <= k
    # The header records what the receiver checks.
    magic, version, _, bits_field, size_field, k_field, _ = HEADER.unpack_from(encoded.payload)
    assert (magic, version, bits_field, size_field, k_field) == (b"FV", 1, bits, size, k)


@pytest.mark.parametrize("size", [1, 5, 1000, 3 * CHUNK + 1])
def test_dense_raw_float32_is_lossless(size: int) -> None:
    vector = gaussian(size) * np.float32(1e30)
    vector[::7] = 0.0
    vector[1::5] = np.float32(1e-42)  # subnormal
    params = CodecParams(topk=1.0, bits=32)
    encoded = encode_update(vector, params, np.random.default_rng(0))
    assert bitwise_equal(encoded.decoded, vector)
    assert bitwise_equal(decode_update(encoded.payload, size=size, params=params), vector)
    assert HEADER.unpack_from(encoded.payload)[2] & 3 == MODE_DENSE


def test_sparse_raw_float32_keeps_exact_values() -> None:
    vector = gaussian(5000)
    encoded = encode_update(vector, CodecParams(0.1, 32), np.random.default_rng(0))
    kept = np.flatnonzero(encoded.decoded)
    assert kept.size == 500
    assert bitwise_equal(encoded.decoded[kept], vector[kept])


def test_encoding_is_deterministic_given_the_rng() -> None:
    vector = gaussian(10_000)
    params = CodecParams(0.1, 4)
    a = encode_update(vector, params, np.random.default_rng(7))
    b = encode_update(vector, params, np.random.default_rng(7))
    c = encode_update(vector, params, np.random.default_rng(8))
    assert a.payload == b.payload
    assert a.payload != c.payload


def test_encode_does_not_modify_input() -> None:
    vector = gaussian(1000)
    before = vector.copy()
    encode_update(vector, CodecParams(0.1, 4), np.random.default_rng(0))
    assert bitwise_equal(vector, before)


def test_all_zero_vector() -> None:
    vector = np.zeros(100, dtype=np.float32)
    for bits in ALL_BITS:
        params = CodecParams(0.1, bits)
        encoded = encode_update(vector, params, np.random.default_rng(0))
        assert not encoded.decoded.any()
        assert not decode_update(encoded.payload, size=100, params=params).any()


def test_extreme_magnitudes_do_not_overflow() -> None:
    big = np.finfo(np.float32).max
    vector = np.array([big, -big, big / 3, 1e-45, 0.0] * 50, dtype=np.float32)
    for bits in ALL_BITS:
        params = CodecParams(1.0, bits)
        encoded = encode_update(vector, params, np.random.default_rng(bits))
        assert np.isfinite(encoded.decoded).all()
        assert np.abs(encoded.decoded).max() <= big
        assert bitwise_equal(
            decode_update(encoded.payload, size=250, params=params), encoded.decoded
        )


def test_zstd_is_used_only_when_it_helps() -> None:
    # Uniform values give uniform 8-bit codes: incompressible, so the body must be stored raw.
    rng = np.random.default_rng(0)
    noisy = rng.uniform(-1, 1, 50_000).astype(np.float32)
    payload = encode_update(noisy, CodecParams(1.0, 8), rng).payload
    assert not HEADER.unpack_from(payload)[2] & FLAG_ZSTD
    assert len(payload) == HEADER.size + 4 * -(-50_000 // CHUNK) + 50_000
    # Evenly spaced kept indices give identical gaps: zstd shrinks the body a lot.
    regular = np.zeros(100_000, dtype=np.float32)
    regular[::100] = rng.uniform(1, 2, 1000)
    params = CodecParams(0.01, 4)
    payload = encode_update(regular, params, rng).payload
    fields, body = unpack(payload)
    assert HEADER.unpack_from(payload)[2] & FLAG_ZSTD
    assert len(payload) < HEADER.size + len(body) * 0.8
    assert decode_update(pack(fields, body), size=100_000, params=params).shape == (100_000,)


def test_compression_ratios_on_a_million_coordinates() -> None:
    size = 1_000_000
    vector = gaussian(size, seed=11)
    rng = np.random.default_rng(0)

    def ratio(topk: float, bits: int) -> float:
        return dense_nbytes(size) / len(encode_update(vector, CodecParams(topk, bits), rng).payload)

    # 10,000 values x 4 bits = 5 kB; gaps average 100, so ~1.3 varint bytes each (~13 kB)
    # before zstd: ~18 kB against 4 MB, a ratio of ~220 (~250 after zstd).
    assert ratio(0.01, 4) >= 200
    # 100 kB of codes + ~100 kB of varint gaps of mean 10, which zstd entropy-codes.
    assert ratio(0.1, 8) >= 20
    # 1 MB of codes: 4x, a bit more because top-heavy code histograms entropy-code.
    assert ratio(1.0, 8) >= 4


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "vector",
    [
        np.zeros(10, dtype=np.float64),
        np.zeros(10, dtype=np.float16),
        np.zeros(10, dtype=np.int32),
        np.zeros((2, 5), dtype=np.float32),
        np.zeros((), dtype=np.float32),
        np.zeros(0, dtype=np.float32),
        np.array([1.0, np.nan], dtype=np.float32),
        np.array([1.0, np.inf], dtype=np.float32),
        np.array([-np.inf, 1.0], dtype=np.float32),
        [1.0, 2.0],
    ],
)
def test_encode_rejects_bad_vectors(vector: Any) -> None:
    with pytest.raises(ValueError, match="`vector`"):
        encode_update(vector, CodecParams(0.5, 8), np.random.default_rng(0))


@pytest.fixture(scope="module")
def valid() -> tuple[bytes, int, CodecParams]:
    params = CodecParams(0.1, 4)
    payload = encode_update(gaussian(1000), params, np.random.default_rng(0)).payload
    return payload, 1000, params


@pytest.mark.parametrize("size", [999, 1001, 10, 10_000, 989])
def test_decode_rejects_size_mismatch(valid: tuple[bytes, int, CodecParams], size: int) -> None:
    payload, _, params = valid
    with pytest.raises(CodecError):
        decode_update(payload, size=size, params=params)


@pytest.mark.parametrize("size", [0, -1, MAX_SIZE + 1, 2**64, True, 10.0])
def test_decode_rejects_invalid_size(valid: tuple[bytes, int, CodecParams], size: Any) -> None:
    payload, _, params = valid
    with pytest.raises(CodecError, match="size"):
        decode_update(payload, size=size, params=params)


@pytest.mark.parametrize(("topk", "bits"), [(0.1, 8), (0.1, 32), (0.2, 4), (0.05, 4), (1.0, 4)])
def test_decode_rejects_params_mismatch(
    valid: tuple[bytes, int, CodecParams], topk: float, bits: int
) -> None:
    payload, size, _ = valid
    with pytest.raises(CodecError):
        decode_update(payload, size=size, params=CodecParams(topk, bits))


def test_decode_rejects_non_bytes(valid: tuple[bytes, int, CodecParams]) -> None:
    _, size, params = valid
    with pytest.raises(CodecError):
        decode_update("FV", size=size, params=params)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        decode_update(b"", size=size, params=params)


def test_decode_accepts_numpy_integer_size(valid: tuple[bytes, int, CodecParams]) -> None:
    payload, size, params = valid
    expected = decode_update(payload, size=size, params=params)
    assert bitwise_equal(decode_update(payload, size=np.int64(size), params=params), expected)


def test_decode_accepts_bytearray_and_memoryview(valid: tuple[bytes, int, CodecParams]) -> None:
    payload, size, params = valid
    expected = decode_update(payload, size=size, params=params)
    assert bitwise_equal(decode_update(bytearray(payload), size=size, params=params), expected)
    assert bitwise_equal(decode_update(memoryview(payload), size=size, params=params), expected)


@pytest.mark.parametrize("compress", [False, True])
def test_decode_rejects_truncation_and_trailing_bytes(compress: bool) -> None:
    params = CodecParams(0.1, 4)
    fields, body = unpack(encode_update(gaussian(1000), params, np.random.default_rng(0)).payload)
    payload = pack(fields, body, compress=compress)
    assert decode_is_safe(payload, 1000, params) is not None
    for bad in (payload[:-1], payload[: HEADER.size], payload + b"\0", payload + payload):
        with pytest.raises(CodecError):
            decode_update(bad, size=1000, params=params)


def test_decode_rejects_header_tampering() -> None:
    params = CodecParams(0.01, 4)
    fields, body = sparse_raw(0.01, 4)
    assert decode_is_safe(pack(fields, body), 1000, params) is not None
    tampered = {
        "magic": (0, b"VF"),
        "version": (1, 2),
        "flags": (2, fields[2] | 0x80),
        "mode": (2, 3),
        "bits": (3, 8),
        "size": (SIZE, 999),
        "huge size": (SIZE, 2**32 - 1),
        "k": (K, fields[K] + 1),
        "index_bytes": (INDEX_BYTES, fields[INDEX_BYTES] + 1),
        "huge k": (K, 2**32 - 1),
        "huge index": (INDEX_BYTES, 2**32 - 1),
        "dense": (2, MODE_DENSE),
        "bitmap": (2, MODE_BITMAP),
    }
    for name, (position, value) in tampered.items():
        bad = list(fields)
        bad[position] = value
        with pytest.raises(CodecError):
            decode_update(pack(bad, body), size=1000, params=params)
        assert name


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, -1.0])
def test_decode_rejects_bad_scales(scale: float) -> None:
    params = CodecParams(0.01, 4)
    fields, body = sparse_raw(0.01, 4)
    offset = fields[INDEX_BYTES]
    bad = body[:offset] + struct.pack("<f", scale) + body[offset + 4 :]
    with pytest.raises(CodecError, match="scale"):
        decode_update(pack(fields, bad), size=1000, params=params)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_decode_rejects_non_finite_raw_values(value: float) -> None:
    params = CodecParams(0.01, 32)
    fields, body = sparse_raw(0.01, 32)
    bad = body[:-4] + struct.pack("<f", value)
    with pytest.raises(CodecError, match="non-finite"):
        decode_update(pack(fields, bad), size=1000, params=params)


def test_decode_rejects_non_zero_padding_bits() -> None:
    params = CodecParams(0.01, 3)  # 10 values x 3 bits = 30 bits: 2 padding bits
    fields, body = sparse_raw(0.01, 3)
    bad = body[:-1] + bytes([body[-1] | 0x80])
    with pytest.raises(CodecError, match="padding"):
        decode_update(pack(fields, bad), size=1000, params=params)


def _zstd_frame(content_size: int, *, single_segment: bool = True, window_log: int = 10) -> bytes:
    """A hand-made zstd frame header followed by one tiny RLE block."""
    descriptor = 0b1100_0000 | (0b0010_0000 if single_segment else 0)
    window = b"" if single_segment else bytes([(window_log - 10) << 3])
    block = (1 | (1 << 1) | (8 << 3)).to_bytes(3, "little") + b"\x00"  # last, RLE, 8 bytes
    return (
        b"\x28\xb5\x2f\xfd"
        + bytes([descriptor])
        + window
        + content_size.to_bytes(8, "little")
        + block
    )


def test_zstd_bomb_is_refused_before_allocating() -> None:
    params = CodecParams(1.0, 32)
    size = MAX_SIZE
    header = HEADER.pack(b"FV", 1, MODE_DENSE | FLAG_ZSTD, 32, size, size, 0)
    tracemalloc.start()
    try:
        for content in (2**40, 4 * size + 1, 0):
            with pytest.raises(CodecError, match="zstd"):
                decode_update(header + _zstd_frame(content), size=size, params=params)
        # Matching content size but a 2 GiB window: refused or decoded, never allocated.
        small = HEADER.pack(b"FV", 1, MODE_DENSE | FLAG_ZSTD, 32, 2, 2, 0)
        frame = _zstd_frame(8, single_segment=False, window_log=31)
        decode_is_safe(small + frame, 2, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_oversized_claims_are_refused_before_allocating() -> None:
    # The receiver expects a huge model; the peer sends a header and a few bytes. Nothing may be
    # sized from the claims or from `size` before the lengths are checked.
    size = MAX_SIZE
    cases = [
        (CodecParams(1.0, 32), MODE_DENSE, 0, "body of"),
        (CodecParams(0.5, 8), MODE_BITMAP, 2**28, "body of"),
        (CodecParams(0.001, 4), MODE_VARINT, 2**32 - 1, "varint section"),
        (CodecParams(0.001, 4), MODE_VARINT, 2**20, "varint section"),
        (CodecParams(0.001, 4), MODE_VARINT, 2**23, "body of"),
    ]
    tracemalloc.start()
    try:
        for params, flags, index_bytes, message in cases:
            k = kept_count(size, params.topk)
            header = HEADER.pack(b"FV", 1, flags, params.bits, size, k, index_bytes)
            with pytest.raises(CodecError, match=message):
                decode_update(header + b"\0" * 64, size=size, params=params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000

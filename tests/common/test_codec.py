from __future__ import annotations

import math
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.codec import (
    CHUNK,
    MAX_SIZE,
    CodecError,
    CodecParams,
    EncodedUpdate,
    ErrorFeedback,
    decode_update,
    dense_nbytes,
    encode_update,
    kept_count,
)

# The documented payload header: magic, version, flags, bits, size, k, index_bytes.
HEADER = struct.Struct("<2sBBBIII")
SIZE, K, INDEX_BYTES = 4, 5, 6
MODE_DENSE, MODE_BITMAP, MODE_VARINT, MODE_SEEDED, FLAG_ZSTD = 0, 1, 2, 3, 4
SEED_BYTES = 16
ALL_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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


def leb128_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


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


# ------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("topk", [0.0, -0.1, 1.5, 1.0000001, math.nan, math.inf, True, "0.5"])
def test_params_reject_bad_topk(topk: Any) -> None:
    with pytest.raises(ValueError, match="`topk`"):
        CodecParams(topk=topk, bits=8)


@pytest.mark.parametrize("bits", [0, 9, 12, 15, 17, 31, 33, -1, 8.0, True])
def test_params_reject_bad_bits(bits: Any) -> None:
    with pytest.raises(ValueError, match=r"`bits` must be 1-8, 16 or 32, got"):
        CodecParams(topk=0.5, bits=bits)


def test_params_error_message_names_value() -> None:
    with pytest.raises(ValueError, match=r"^`bits` must be 1-8, 16 or 32, got 12$"):
        CodecParams(topk=0.5, bits=12)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_params_accept_valid(bits: int) -> None:
    assert CodecParams(topk=1, bits=bits).bits == bits
    assert CodecParams(topk=1e-9, bits=bits).topk == 1e-9


def test_params_accept_numpy_scalars_and_store_python_numbers() -> None:
    params = CodecParams(topk=np.float32(0.5), bits=np.int64(4))
    assert type(params.topk) is float
    assert type(params.bits) is int
    assert params == CodecParams(0.5, 4)


@pytest.mark.parametrize(
    ("size", "topk", "k"),
    [(30, 0.1, 3), (1000, 0.001, 1), (10, 0.01, 1), (7, 1.0, 7), (3, 0.5, 2), (1, 1e-9, 1),
     (1_000_000, 0.01, 10_000), (1001, 0.01, 11), (100, 0.07, 7), (10, 0.3, 3)],
)  # fmt: skip
def test_kept_count_examples(size: int, topk: float, k: int) -> None:
    assert kept_count(size, topk) == k


@given(size=st.integers(1, MAX_SIZE), permille=st.integers(1, 1000))
@settings(max_examples=300, database=None)
def test_kept_count_matches_exact_rational_ceiling(size: int, permille: int) -> None:
    # topk = permille/1000 is not exact in binary; k must still be the exact rational ceiling.
    assert kept_count(size, permille / 1000) == max(1, -(-permille * size // 1000))


@pytest.mark.parametrize(("size", "topk"), [(0, 0.5), (-1, 0.5), (MAX_SIZE + 1, 0.5), (10, 0.0)])
def test_kept_count_rejects_bad_arguments(size: int, topk: float) -> None:
    with pytest.raises(ValueError):
        kept_count(size, topk)


def test_dense_nbytes() -> None:
    assert dense_nbytes(0) == 0
    assert dense_nbytes(1_000_000) == 4_000_000
    with pytest.raises(ValueError):
        dense_nbytes(-1)


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


# --------------------------------------------------------------------------------- quantizer


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("topk", [1.0, 0.25])
def test_stochastic_rounding_is_unbiased(bits: int, topk: float) -> None:
    vector = gaussian(64, seed=3)
    params = CodecParams(topk, bits)
    rng = np.random.default_rng(bits)
    rounds = 2000
    total = np.zeros(64)
    for _ in range(rounds):
        total += encode_update(vector, params, rng).decoded
    mean = total / rounds
    kept = np.argsort(-np.abs(vector), kind="stable")[: kept_count(64, topk)]
    # Each decoded value is one of two neighbouring levels, so its standard deviation is at
    # most step/2; six standard errors of the mean leave a ~1e-9 false-alarm rate.
    tolerance = 6 * step(np.abs(vector[kept]).max(), bits) / 2 / math.sqrt(rounds)
    assert np.abs(mean[kept] - vector[kept]).max() <= tolerance
    # Round-to-nearest would be biased by up to step/2 and fail the check above.
    assert tolerance < 0.1 * step(np.abs(vector[kept]).max(), bits)


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8, 16])
def test_quantization_error_is_below_one_step_of_the_chunk_scale(bits: int) -> None:
    # Three chunks of very different magnitude: a single global scale would break the bound
    # for the small ones.
    rng = np.random.default_rng(bits)
    vector = np.concatenate(
        [rng.uniform(-m, m, CHUNK) for m in (1.0, 1000.0, 1e-3)] + [rng.uniform(-5, 5, 17)]
    ).astype(np.float32)
    encoded = encode_update(vector, CodecParams(1.0, bits), rng)
    starts = np.arange(0, vector.size, CHUNK)
    scales = np.repeat(np.maximum.reduceat(np.abs(vector), starts), CHUNK)[: vector.size]
    error = np.abs(encoded.decoded.astype(np.float64) - vector)
    assert (error <= step(scales, bits) * (1 + 1e-6)).all()
    assert (np.abs(encoded.decoded) <= scales).all()


def test_one_bit_decodes_to_plus_or_minus_scale() -> None:
    vector = gaussian(1000)
    encoded = encode_update(vector, CodecParams(1.0, 1), np.random.default_rng(0))
    scale = np.abs(vector).max()
    assert set(np.abs(encoded.decoded).tolist()) == {float(scale)}


# ----------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("size", [1, 10, 999, 50_000])
@pytest.mark.parametrize("topk", [0.001, 0.01, 0.1, 0.37, 0.5, 0.99])
def test_topk_keeps_exactly_the_largest_magnitudes(size: int, topk: float) -> None:
    rng = np.random.default_rng(size)
    # Distinct non-zero magnitudes with random signs, so the reference set is unique.
    vector = (rng.permutation(size) + 1.0) * rng.choice([-1.0, 1.0], size)
    vector = vector.astype(np.float32)
    encoded = encode_update(vector, CodecParams(topk, 32), rng)
    k = kept_count(size, topk)
    reference = np.sort(np.argsort(-np.abs(vector), kind="stable")[:k])
    assert np.array_equal(np.flatnonzero(encoded.decoded), reference)


def test_topk_with_ties_keeps_k_of_the_largest() -> None:
    vector = np.tile(np.array([3, -3, 1, -1, 2], dtype=np.float32), 200)
    k = kept_count(vector.size, 0.3)  # all 400 of |3| fit, 200 of the 400 |2|s do not
    encoded = encode_update(vector, CodecParams(0.3, 32), np.random.default_rng(0))
    kept = np.abs(encoded.decoded[encoded.decoded != 0])
    assert kept.size == k
    assert np.array_equal(np.sort(kept), np.sort(np.abs(vector))[-k:])


# --------------------------------------------------------------------------- index coding


def _index_costs(vector: np.ndarray, topk: float) -> tuple[int, int]:
    """Slow reference: bytes of the bitmap and of the delta-varint index coding."""
    k = kept_count(vector.size, topk)
    indices = np.sort(np.argsort(-np.abs(vector), kind="stable")[:k])
    gaps = np.diff(indices, prepend=-1) - 1
    return -(-vector.size // 8), sum(leb128_len(int(g)) for g in gaps)


@pytest.mark.parametrize(
    ("topk", "mode"),
    [(0.5, MODE_BITMAP), (0.2, MODE_BITMAP), (0.05, MODE_VARINT), (0.001, MODE_VARINT)],
)
def test_index_coding_picks_the_smaller(topk: float, mode: int) -> None:
    vector = gaussian(100_000, seed=5)
    params = CodecParams(topk, 8)
    encoded = encode_update(vector, params, np.random.default_rng(0))
    fields, body = unpack(encoded.payload)
    bitmap, varint = _index_costs(vector, topk)
    assert fields[2] & 3 == mode
    assert fields[INDEX_BYTES] == min(bitmap, varint)
    k = kept_count(vector.size, topk)
    raw_size = HEADER.size + min(bitmap, varint) + 4 * -(-k // CHUNK) + k
    assert len(body) == raw_size - HEADER.size
    assert len(encoded.payload) <= raw_size


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


# --------------------------------------------------------------------------- error feedback


def _send_repeatedly(
    vector: np.ndarray, params: CodecParams, rounds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Send ``vector`` every round with and without error feedback.

    Returns the summed decoded updates with and without feedback, the residual's norm after
    each round, and the final residual.
    """
    feedback = ErrorFeedback()
    with_ef = np.zeros(vector.size)
    without_ef = np.zeros(vector.size)
    residual_norms = []
    residual = None
    for _ in range(rounds):
        compensated = feedback.compensate(vector)
        encoded = encode_update(compensated, params, rng)
        feedback.update(compensated, encoded.decoded)
        with_ef += encoded.decoded
        without_ef += encode_update(vector, params, rng).decoded
        residual = feedback.residual
        assert residual is not None
        residual_norms.append(float(np.linalg.norm(residual)))
    assert residual is not None
    return with_ef, without_ef, residual_norms, residual


def test_error_feedback_tracks_the_cumulative_update() -> None:
    size, rounds = 1000, 400
    rng = np.random.default_rng(0)
    vector = (rng.standard_normal(size) * np.linspace(0.1, 2.0, size)).astype(np.float32)
    with_ef, without_ef, residual_norms, residual = _send_repeatedly(
        vector, CodecParams(0.02, 4), rounds, rng
    )
    target = rounds * vector.astype(np.float64)
    error_with = np.linalg.norm(with_ef - target) / np.linalg.norm(target)
    error_without = np.linalg.norm(without_ef - target) / np.linalg.norm(target)
    # Without EF the same 20 largest coordinates are sent every round and the other 980 (87%
    # of the norm here) never are; with EF the error is ~5% and falls like 1/rounds.
    assert error_without > 0.8
    assert error_with < 0.1 * error_without
    # With EF the residual is bounded (it does not grow with the number of rounds)...
    assert max(residual_norms[rounds // 2 :]) <= 1.5 * max(residual_norms[: rounds // 2])
    # ...and it is exactly what the sum of decoded updates is missing.
    assert np.allclose(target - with_ef, residual, rtol=1e-4, atol=1e-2)


def test_error_feedback_api() -> None:
    feedback = ErrorFeedback()
    assert feedback.residual is None
    delta = gaussian(10)
    compensated = feedback.compensate(delta)
    assert bitwise_equal(compensated, delta)
    assert compensated is not delta
    decoded = np.zeros(10, dtype=np.float32)
    decoded[3] = compensated[3]
    feedback.update(compensated, decoded)
    residual = feedback.residual
    assert residual is not None
    assert bitwise_equal(residual, compensated - decoded)
    residual[:] = 99  # a copy: the stored residual must not change
    assert bitwise_equal(feedback.compensate(delta), delta + (compensated - decoded))

    restored = ErrorFeedback(np.ones(10, dtype=np.float32))
    assert bitwise_equal(restored.compensate(delta), delta + 1)
    with pytest.raises(ValueError, match="shape"):
        restored.compensate(gaussian(11))
    with pytest.raises(ValueError, match="shape"):
        restored.update(gaussian(10), gaussian(9))
    with pytest.raises(ValueError, match="float32"):
        restored.compensate(np.zeros(10))
    with pytest.raises(ValueError, match="float32"):
        ErrorFeedback(np.zeros(10))
    with pytest.raises(ValueError, match="1-D"):
        ErrorFeedback(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        restored.compensate(np.full(10, np.nan, dtype=np.float32))


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


def _sparse_raw(topk: float, bits: int, size: int = 1000) -> tuple[list[Any], bytes]:
    encoded = encode_update(gaussian(size), CodecParams(topk, bits), np.random.default_rng(0))
    return unpack(encoded.payload)


def test_decode_rejects_header_tampering() -> None:
    params = CodecParams(0.01, 4)
    fields, body = _sparse_raw(0.01, 4)
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


def test_decode_rejects_index_tampering_varint() -> None:
    params = CodecParams(0.01, 4)
    fields, body = _sparse_raw(0.01, 4)
    assert fields[2] == MODE_VARINT
    index_bytes = fields[INDEX_BYTES]
    section, rest = bytearray(body[:index_bytes]), body[index_bytes:]

    def attempt(new_section: bytes) -> None:
        bad = list(fields)
        bad[INDEX_BYTES] = len(new_section)
        with pytest.raises(CodecError):
            decode_update(pack(bad, new_section + rest), size=1000, params=params)

    first_len = leb128_len(section[0] & 0x7F if section[0] < 0x80 else 0x80)
    # An overlong (non-canonical) encoding of the first gap: same value, one more byte.
    overlong = bytes(section[: first_len - 1]) + bytes([section[first_len - 1] | 0x80, 0x00])
    attempt(overlong + bytes(section[first_len:]))
    # A gap that pushes the last index past the end.
    attempt(bytes(section[:-1]) + b"\xe8\x07")  # last gap = 1000
    attempt(bytes(section[:-1]) + bytes([0x7F]) * 2)  # one varint too many, one index too far
    attempt(bytes(section[:-1]) + b"\x80")  # ends inside a varint
    attempt(b"\xff\xff\xff\xff\xff\x01" + bytes(section[1:]))  # six-byte varint
    attempt(bytes(section[:-1]))  # one index missing


def test_decode_rejects_index_tampering_bitmap() -> None:
    params = CodecParams(0.5, 8)
    size = 1001  # bitmap has 7 padding bits
    fields, body = _sparse_raw(0.5, 8, size)
    assert fields[2] == MODE_BITMAP
    bitmap = bytearray(body[: fields[INDEX_BYTES]])

    def attempt(new_bitmap: bytes) -> None:
        with pytest.raises(CodecError):
            bad = pack(fields, new_bitmap + body[len(bitmap) :])
            decode_update(bad, size=size, params=params)

    padded = bytearray(bitmap)
    padded[-1] |= 0x80  # a coordinate past the end
    attempt(bytes(padded))
    first_set = next(i for i in range(size) if bitmap[i // 8] >> (i % 8) & 1)
    fewer = bytearray(bitmap)
    fewer[first_set // 8] &= ~(1 << (first_set % 8)) & 0xFF
    attempt(bytes(fewer))
    first_clear = next(i for i in range(size) if not bitmap[i // 8] >> (i % 8) & 1)
    more = bytearray(bitmap)
    more[first_clear // 8] |= 1 << (first_clear % 8)
    attempt(bytes(more))


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, -1.0])
def test_decode_rejects_bad_scales(scale: float) -> None:
    params = CodecParams(0.01, 4)
    fields, body = _sparse_raw(0.01, 4)
    offset = fields[INDEX_BYTES]
    bad = body[:offset] + struct.pack("<f", scale) + body[offset + 4 :]
    with pytest.raises(CodecError, match="scale"):
        decode_update(pack(fields, bad), size=1000, params=params)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_decode_rejects_non_finite_raw_values(value: float) -> None:
    params = CodecParams(0.01, 32)
    fields, body = _sparse_raw(0.01, 32)
    bad = body[:-4] + struct.pack("<f", value)
    with pytest.raises(CodecError, match="non-finite"):
        decode_update(pack(fields, bad), size=1000, params=params)


def test_decode_rejects_non_zero_padding_bits() -> None:
    params = CodecParams(0.01, 3)  # 10 values x 3 bits = 30 bits: 2 padding bits
    fields, body = _sparse_raw(0.01, 3)
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


# ------------------------------------------------------------------------------ random mask


def reference_seeded_mask(seed: bytes, size: int, k: int) -> np.ndarray:
    """Slow reference of the documented rule: the k smallest (key, index) pairs."""
    keys = np.random.PCG64(int.from_bytes(seed, "little")).random_raw(size)
    order = np.lexsort((np.arange(size), keys))
    return np.sort(order[:k])


def test_params_reject_bad_mask() -> None:
    for mask in ("top-k", "", None, 1):
        with pytest.raises(ValueError, match="`mask`"):
            CodecParams(0.1, 8, mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [2, 9, 1000, 2 * CHUNK + 3, 20 * CHUNK])
@pytest.mark.parametrize(("topk", "bits"), [(0.5, 8), (0.068, 4), (0.135, 2), (0.27, 1), (0.1, 32)])
def test_random_mask_round_trip_is_exact(size: int, topk: float, bits: int) -> None:
    vector = gaussian(size, seed=size)
    k = kept_count(size, topk)
    encoded = encode_update(vector, CodecParams(topk, bits, "random"), np.random.default_rng(2))
    fields, body = unpack(encoded.payload)
    if k == size:  # nothing to choose: the dense mode, no seed
        assert fields[2] == MODE_DENSE
        return
    assert (fields[2], fields[INDEX_BYTES]) == (MODE_SEEDED, SEED_BYTES)
    expected = reference_seeded_mask(body[:SEED_BYTES], size, k)
    # The receiver's params need not name the mask: the payload says which one it is.
    decoded = decode_update(encoded.payload, size=size, params=CodecParams(topk, bits))
    assert bitwise_equal(decoded, encoded.decoded)
    assert set(np.flatnonzero(decoded).tolist()) <= set(expected.tolist())
    if bits == 32:
        assert bitwise_equal(decoded[expected], vector[expected])


def test_seeded_mask_is_pinned() -> None:
    # Known answers of the wire rule: a numpy release that changed PCG64 or SeedSequence would
    # make old senders and new receivers disagree, and must fail here first.
    from common.codec_index import seeded_mask

    assert np.flatnonzero(seeded_mask(bytes(range(16)), 40, 6)).tolist() == [0, 2, 3, 5, 20, 26]
    assert np.flatnonzero(seeded_mask(b"\xff" * 16, 1000, 3)).tolist() == [158, 921, 990]


def test_seeded_mask_breaks_ties_towards_lower_indices() -> None:
    from common.codec_index import seeded_mask

    seed = bytes(16)
    keys = np.random.PCG64(0).random_raw(50)
    for k in (1, 7, 49):
        assert np.array_equal(
            np.flatnonzero(seeded_mask(seed, 50, k)), reference_seeded_mask(seed, 50, k)
        )
    assert np.unique(keys).size == 50


@pytest.mark.parametrize("bits", [2, 4, 32])
def test_random_mask_is_unbiased_up_to_the_kept_fraction(bits: int) -> None:
    # Over fresh seeds each coordinate is kept with probability k / size and its kept value is
    # unbiased, so E[decoded] = (k / size) * vector.
    size, topk, rounds = 40, 0.25, 4000
    vector = gaussian(size, seed=9)
    params = CodecParams(topk, bits, "random")
    rng = np.random.default_rng(bits)
    total = np.zeros(size)
    kept_times = np.zeros(size)
    for _ in range(rounds):
        decoded = encode_update(vector, params, rng).decoded
        total += decoded
        kept_times += decoded != 0
    fraction = kept_count(size, topk) / size
    scale = float(np.abs(vector).max())
    # A decoded value lies in [-scale, scale]: its standard deviation is below `scale`.
    assert np.abs(total / rounds - fraction * vector).max() <= 6 * scale / math.sqrt(rounds)
    # Every coordinate is chosen about equally often (binomial, six standard deviations).
    sd = math.sqrt(rounds * fraction * (1 - fraction))
    assert np.abs(kept_times - rounds * fraction).max() <= 6 * sd + 0.05 * rounds * (bits < 32)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_random_mask_error_is_below_one_step_on_kept_values(bits: int) -> None:
    rng = np.random.default_rng(bits)
    vector = rng.uniform(-3, 3, 3 * CHUNK * 10).astype(np.float32)
    encoded = encode_update(vector, CodecParams(0.1, bits, "random"), rng)
    _, body = unpack(encoded.payload)
    kept = reference_seeded_mask(body[:SEED_BYTES], vector.size, kept_count(vector.size, 0.1))
    values = vector[kept]
    scales = np.repeat(np.maximum.reduceat(np.abs(values), np.arange(0, values.size, CHUNK)), CHUNK)
    error = np.abs(encoded.decoded[kept].astype(np.float64) - values)
    assert (error <= step(scales[: values.size], bits) * (1 + 1e-6)).all()
    assert not np.delete(encoded.decoded, kept).any()


def test_random_mask_costs_a_seed_not_indices() -> None:
    size, topk, bits = 26_010, 0.068, 4
    vector = gaussian(size)
    k = kept_count(size, topk)
    random = encode_update(vector, CodecParams(topk, bits, "random"), np.random.default_rng(0))
    top = encode_update(vector, CodecParams(topk, bits), np.random.default_rng(0))
    assert len(random.payload) <= HEADER.size + SEED_BYTES + 4 + -(-k * bits // 8)
    assert len(random.payload) < 0.6 * len(top.payload)


def test_random_mask_error_feedback_sends_every_coordinate() -> None:
    size, rounds, topk = 500, 400, 0.05
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(size).astype(np.float32)
    sent, without, _, residual = _send_repeatedly(
        vector, CodecParams(topk, 4, "random"), rounds, rng
    )
    target = rounds * vector.astype(np.float64)
    # Without feedback only ~5% of each round's update arrives; with it the cumulative sum
    # misses only the residual, a coordinate's wait of ~1/topk rounds: bounded, not growing.
    assert np.linalg.norm(without - target) / np.linalg.norm(target) > 0.9
    assert np.linalg.norm(sent - target) / np.linalg.norm(target) < 0.1
    assert np.linalg.norm(residual) < 3 / topk * np.linalg.norm(vector)


def _seeded_payload(
    size: int = 1000, topk: float = 0.1, bits: int = 4
) -> tuple[bytes, CodecParams]:
    params = CodecParams(topk, bits, "random")
    return encode_update(gaussian(size), params, np.random.default_rng(0)).payload, params


def test_decode_rejects_seeded_mode_with_a_wrong_seed_length() -> None:
    payload, params = _seeded_payload()
    fields, body = unpack(payload)
    for length in (0, 15, 17, 125):
        forged = list(fields)
        forged[INDEX_BYTES] = length
        with pytest.raises(CodecError):
            decode_update(pack(forged, body), size=1000, params=params)


def test_decode_rejects_seeded_mode_when_every_coordinate_is_kept() -> None:
    params = CodecParams(1.0, 8)
    body = bytes(SEED_BYTES) + struct.pack("<f", 1.0) + bytes(100)
    payload = HEADER.pack(b"FV", 1, MODE_SEEDED, 8, 100, 100, SEED_BYTES) + body
    with pytest.raises(CodecError, match="seeded mask"):
        decode_update(payload, size=100, params=params)


def test_decode_rejects_seeded_payload_with_wrong_length_or_k() -> None:
    payload, params = _seeded_payload()
    with pytest.raises(CodecError):
        decode_update(payload[:-1], size=1000, params=params)
    with pytest.raises(CodecError):
        decode_update(payload + b"\x00", size=1000, params=params)
    with pytest.raises(CodecError, match="keeps"):
        decode_update(payload, size=1000, params=CodecParams(0.2, 4))


# --------------------------------------------------------------------------- property tests

params_strategy = st.builds(
    CodecParams,
    topk=st.one_of(
        st.sampled_from([1.0, 0.5, 0.1, 0.01, 0.001]),
        st.floats(min_value=1e-6, max_value=1.0, exclude_min=True),
    ),
    bits=st.sampled_from(ALL_BITS),
    mask=st.sampled_from(["topk", "random"]),
)

finite_vectors = hnp.arrays(
    dtype=np.float32,
    shape=st.integers(1, 300),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@given(vector=finite_vectors, params=params_strategy, seed=st.integers(0, 2**32 - 1))
@settings(FUZZ, max_examples=2000)
def test_property_round_trip(vector: np.ndarray, params: CodecParams, seed: int) -> None:
    encoded = encode_update(vector, params, np.random.default_rng(seed))
    decoded = decode_update(encoded.payload, size=vector.size, params=params)
    assert bitwise_equal(decoded, encoded.decoded)
    assert np.isfinite(decoded).all()
    assert np.count_nonzero(decoded) <= kept_count(vector.size, params.topk)
    assert np.abs(decoded).max() <= np.abs(vector).max()
    if params.bits == 32:
        kept = decoded != 0
        assert bitwise_equal(decoded[kept], vector[kept])


@given(payload=st.binary(max_size=400), size=st.integers(1, 300), params=params_strategy)
@settings(FUZZ, max_examples=2000)
def test_fuzz_random_bytes(payload: bytes, size: int, params: CodecParams) -> None:
    decode_is_safe(payload, size, params)


@given(
    data=st.data(),
    size=st.integers(1, 300),
    params=params_strategy,
    flags=st.integers(0, 255),
    body=st.binary(max_size=400),
    compress=st.booleans(),
)
@settings(FUZZ, max_examples=3000)
def test_fuzz_random_body_behind_valid_header(
    data: st.DataObject, size: int, params: CodecParams, flags: int, body: bytes, compress: bool
) -> None:
    # Random bytes rarely get past the magic; a plausible header reaches the body parsers.
    k = kept_count(size, params.topk)
    index_bytes = data.draw(
        st.one_of(
            st.just(-(-size // 8)),
            st.just(SEED_BYTES),
            st.integers(0, 5 * k + 2),
            st.integers(0, 2**32 - 1),
        )
    )
    if compress:
        body = zstandard.ZstdCompressor().compress(body)
        flags |= FLAG_ZSTD
    header = HEADER.pack(b"FV", 1, flags & 0b111, params.bits, size, k, index_bytes)
    payload = header + body
    decode_is_safe(payload, size, params)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("splice"), st.integers(0, 2**16), st.integers(0, 16), st.binary(max_size=16)),
    # NaN, +inf, -inf and a NaN with every bit set: random bytes rarely spell a non-finite float.
    st.tuples(
        st.just("poke"),
        st.integers(0, 2**16),
        st.sampled_from(
            [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff", b"\xff" * 4]
        ),
    ),
)


def mutate(payload: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(payload)
    for op, *args in mutations:
        at = args[0] % (len(buf) + 1) if op != "extend" else 0
        if op == "flip" and at < len(buf):
            buf[at] ^= 1 << args[1]
        elif op == "set" and at < len(buf):
            buf[at] = args[1]
        elif op == "truncate":
            del buf[at:]
        elif op == "extend":
            buf += args[0]
        elif op == "splice":
            buf[at : at + args[1]] = args[2]
        elif op == "poke":
            buf[at : at + 4] = args[1]
    return bytes(buf)


@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 300),
    params=params_strategy,
    form=st.sampled_from(["as-sent", "raw", "raw-recompressed"]),
    mutations=st.lists(mutation, min_size=1, max_size=4),
    size_shift=st.sampled_from([0, 0, 0, 0, -1, 1, 7]),
)
@settings(FUZZ, max_examples=5500)
def test_fuzz_mutated_valid_payloads(
    seed: int,
    size: int,
    params: CodecParams,
    form: str,
    mutations: list[tuple[Any, ...]],
    size_shift: int,
) -> None:
    rng = np.random.default_rng(seed)
    vector = (rng.standard_normal(size) * 10 ** rng.uniform(-30, 30)).astype(np.float32)
    payload = encode_update(vector, params, rng).payload
    # Mutating the compressed form mostly exercises zstd; mutating the raw body (optionally
    # recompressed, so zstd accepts it) exercises our own parsers.
    if form == "as-sent":
        candidate = mutate(payload, mutations)
    else:
        fields, body = unpack(payload)
        candidate = mutate(HEADER.pack(*fields) + body, mutations)
        if form == "raw-recompressed" and len(candidate) >= HEADER.size:
            fields = list(HEADER.unpack_from(candidate))
            candidate = pack(fields, candidate[HEADER.size :], compress=True)
    decode_is_safe(candidate, max(1, size + size_shift), params)

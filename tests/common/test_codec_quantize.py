from __future__ import annotations

import math

import numpy as np
import pytest

from common.codec import CHUNK, CodecParams, encode_update, kept_count
from tests.common.codec_support import gaussian, step

# --------------------------------------------------------------------------------- quantizer


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("topk", [1.0, 0.25])
def test_stochastic_rounding_is_unbiased(bits: int, topk: float) -> None:
    vector = gaussian(64, seed=3)
    params = CodecParams(topk, bits, quantizer="stochastic")
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
    params = CodecParams(1.0, 1, quantizer="stochastic")
    encoded = encode_update(vector, params, np.random.default_rng(0))
    scale = np.abs(vector).max()
    assert set(np.abs(encoded.decoded).tolist()) == {float(scale)}


# ------------------------------------------------------------------------------- code packing


def _reference_stream(codes: list[int], bits: int) -> bytes:
    """The documented layout, bit by bit: code i's bit b is stream bit ``i * bits + b``."""
    out = bytearray(-(-len(codes) * bits // 8))
    for i, code in enumerate(codes):
        for b in range(bits):
            if code >> b & 1:
                position = i * bits + b
                out[position // 8] |= 1 << (position % 8)
    return bytes(out)


def test_codes_pack_to_the_documented_stream() -> None:
    from common.codec_quantize import pack_codes

    assert pack_codes(np.array([1, 2, 3], dtype=np.uint8), 2) == bytes([0b0011_1001])
    assert pack_codes(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=np.uint8), 1) == b"\x0d\x01"


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("k", [1, 7, 8, 9, 4099])
def test_packing_matches_the_reference_and_unpacks(bits: int, k: int) -> None:
    from common.codec_quantize import pack_codes, unpack_codes

    codes = np.random.default_rng(k * bits).integers(0, 1 << bits, k).astype(np.uint8)
    packed = pack_codes(codes, bits)

    assert packed == _reference_stream(codes.tolist(), bits)
    assert np.array_equal(unpack_codes(memoryview(packed), k, bits), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 3])
def test_unpacking_refuses_set_padding_bits(bits: int) -> None:
    from common.codec import CodecError
    from common.codec_quantize import pack_codes, unpack_codes

    k = 3  # 3 * bits is never a whole number of bytes for these
    packed = bytearray(pack_codes(np.zeros(k, dtype=np.uint8), bits))
    packed[-1] |= 0x80
    with pytest.raises(CodecError, match="padding"):
        unpack_codes(memoryview(bytes(packed)), k, bits)

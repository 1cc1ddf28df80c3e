from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from common.codec import CHUNK, CodecError, CodecParams, decode_update, encode_update, kept_count
from tests.common.codec_support import (
    HEADER,
    INDEX_BYTES,
    MODE_BITMAP,
    MODE_DENSE,
    MODE_SEEDED,
    MODE_VARINT,
    SEED_BYTES,
    bitwise_equal,
    gaussian,
    pack,
    sparse_raw,
    step,
    unpack,
)


def leb128_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


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


def test_decode_rejects_index_tampering_varint() -> None:
    params = CodecParams(0.01, 4)
    fields, body = sparse_raw(0.01, 4)
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
    fields, body = sparse_raw(0.5, 8, size)
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


# ------------------------------------------------------------------------------ random mask


def reference_seeded_mask(seed: bytes, size: int, k: int) -> np.ndarray:
    """Slow reference of the documented rule: the k smallest (key, index) pairs."""
    keys = np.random.PCG64(int.from_bytes(seed, "little")).random_raw(size)
    order = np.lexsort((np.arange(size), keys))
    return np.sort(order[:k])


@pytest.mark.parametrize("size", [2, 9, 1000, 2 * CHUNK + 3, 20 * CHUNK])
@pytest.mark.parametrize(("topk", "bits"), [(0.5, 8), (0.068, 4), (0.135, 2), (0.27, 1), (0.1, 32)])
def test_random_mask_round_trip_is_exact(size: int, topk: float, bits: int) -> None:
    vector = gaussian(size, seed=size)
    k = kept_count(size, topk)
    params = CodecParams(topk, bits, "random", quantizer="stochastic")
    encoded = encode_update(vector, params, np.random.default_rng(2))
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


def test_seeded_indices_are_the_masks_and_neither_can_be_written() -> None:
    # Both are shared by everyone in the process who asks for the same seed (cached): a caller
    # that wrote to one would change every later round trip's coordinates.
    from common.codec_index import seeded_indices, seeded_mask

    seed = bytes(range(16))
    indices = seeded_indices(seed, 1000, 37)
    assert np.array_equal(indices, reference_seeded_mask(seed, 1000, 37))
    assert np.array_equal(indices, np.flatnonzero(seeded_mask(seed, 1000, 37)))
    for shared in (indices, seeded_mask(seed, 1000, 37)):
        with pytest.raises(ValueError):
            shared[0] = shared[1]


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

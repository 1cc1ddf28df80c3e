from __future__ import annotations

from typing import Any

import numpy as np
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.codec import CodecParams, decode_update, encode_update, kept_count
from tests.common.codec_support import (
    ALL_BITS,
    FLAG_ZSTD,
    HEADER,
    SEED_BYTES,
    bitwise_equal,
    decode_is_safe,
    pack,
    unpack,
)

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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

"""Tests of ``common.downlink``: bit-identical rebuilds, and every check of ``open_blob``."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import protocol
from common.crypto.signing import SigningKey
from common.downlink import (
    DENSE_BITS,
    HEADER_LEN,
    OVERHEAD,
    DownlinkError,
    DownlinkHeader,
    Expected,
    apply_change,
    digest,
    encode_change,
    open_blob,
    signed_message,
    zero_digest,
)

SIGNER = SigningKey.from_seed(b"\x03" * 32)
SIZE = 50
EXPECTED = Expected(run_id=9, server_round=3, node_id=77, size=SIZE)
finite = st.floats(-1e3, 1e3, width=32)


def _blob(payload: bytes, *, signer: SigningKey = SIGNER, **fields: object) -> bytes:
    values: dict[str, object] = {
        "bits": 8,
        "size": SIZE,
        "run_id": 9,
        "server_round": 3,
        "node_id": 77,
        "base": zero_digest(SIZE),
        "target": b"\x00" * 32,
        "payload_len": len(payload),
        **fields,
    }
    header = DownlinkHeader(**values).pack()  # type: ignore[arg-type]
    return header + payload + signer.sign(signed_message(header, hashlib.sha256(payload).digest()))


def _payload() -> bytes:
    target = np.linspace(-1, 1, SIZE, dtype=np.float32)
    payload, _ = encode_change(target, np.zeros(SIZE, np.float32), 8, np.random.default_rng(0))
    return payload


@settings(max_examples=50, deadline=None)
@given(
    target=hnp.arrays(np.float32, SIZE, elements=finite),
    base=hnp.arrays(np.float32, SIZE, elements=finite),
    bits=st.sampled_from([1, 2, 4, 8, 16, DENSE_BITS]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_node_rebuilds_the_servers_reference_bit_for_bit(
    target: np.ndarray, base: np.ndarray, bits: int, seed: int
) -> None:
    payload, rebuilt_on_server = encode_change(target, base, bits, np.random.default_rng(seed))

    rebuilt_on_node = apply_change(base, payload, bits)

    assert digest(rebuilt_on_node) == digest(rebuilt_on_server)
    step = 2 * float(np.abs(target - base).max()) / (2**bits - 1) if bits != DENSE_BITS else 0.0
    # float32 rounding of base + change adds at most an ulp of the larger operand.
    ulp = np.spacing(np.maximum(np.abs(base), np.abs(target))).max()
    assert float(np.abs(rebuilt_on_node - target).max()) <= step * 1.0001 + 2 * ulp


def test_raw_float32_from_zeros_is_exact() -> None:
    target = np.random.default_rng(1).standard_normal(SIZE).astype(np.float32)

    payload, rebuilt = encode_change(
        target, np.zeros(SIZE, np.float32), DENSE_BITS, np.random.default_rng(0)
    )

    np.testing.assert_array_equal(rebuilt, target)
    np.testing.assert_array_equal(
        apply_change(np.zeros(SIZE, np.float32), payload, DENSE_BITS), target
    )


def test_digest_is_sha256_of_little_endian_float32() -> None:
    vector = np.arange(4, dtype=np.float32)
    assert digest(vector) == hashlib.sha256(vector.astype("<f4").tobytes()).digest()
    assert digest(vector.astype(">f4")) == digest(vector)
    assert zero_digest(3) == hashlib.sha256(bytes(12)).digest()


def test_a_good_blob_opens() -> None:
    payload = _payload()

    header, opened = open_blob(_blob(payload), SIGNER.public_bytes, EXPECTED)

    assert opened == payload
    assert (header.run_id, header.server_round, header.node_id, header.bits) == (9, 3, 77, 8)
    assert len(_blob(payload)) == OVERHEAD + len(payload)


def _refusal(blob: object, key: bytes = SIGNER.public_bytes) -> str:
    with pytest.raises(DownlinkError) as caught:
        open_blob(blob, key, EXPECTED)  # type: ignore[arg-type]
    assert caught.value.cause == protocol.CAUSE_DOWNLINK
    assert "\n" not in caught.value.detail
    return caught.value.detail


@pytest.mark.parametrize("cut", [0, 1, HEADER_LEN - 1, HEADER_LEN, OVERHEAD - 1])
def test_short_blobs_are_truncated(cut: int) -> None:
    assert "truncated" in _refusal(_blob(_payload())[:cut])


def test_a_blob_missing_its_last_byte_or_with_one_more_is_refused() -> None:
    blob = _blob(_payload())
    assert "truncated" in _refusal(blob[:-1])
    assert "truncated" in _refusal(blob + b"\x00")
    assert "truncated" in _refusal(None)


def test_every_altered_byte_fails_the_signature_or_the_framing() -> None:
    blob = _blob(_payload())
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        detail = _refusal(bytes(bad))
        assert "signature" in detail or "truncated" in detail


def test_another_signing_key_is_refused() -> None:
    other = SigningKey.from_seed(b"\x04" * 32)
    assert "signature" in _refusal(_blob(_payload(), signer=other))
    assert "signature" in _refusal(_blob(_payload()), key=other.public_bytes)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"run_id": 8}, "run 8"),
        ({"server_round": 2}, "round 2"),
        ({"node_id": 78}, "node 78"),
        ({"size": SIZE + 1}, f"size {SIZE + 1}"),
        ({"bits": 0}, "0 bits"),
        ({"bits": 12}, "12 bits"),
    ],
)
def test_a_signed_blob_for_another_context_is_refused(fields: dict[str, Any], words: str) -> None:
    assert words in _refusal(_blob(_payload(), **fields))


def test_an_unknown_version_is_refused_even_when_signed() -> None:
    blob = bytearray(_blob(_payload()))
    blob[4] = 2
    header = bytes(blob[:HEADER_LEN])
    payload = bytes(blob[HEADER_LEN:-64])
    resigned = (
        header + payload + SIGNER.sign(signed_message(header, hashlib.sha256(payload).digest()))
    )

    assert "version 2" in _refusal(resigned)


def test_a_signed_payload_that_does_not_decode_is_refused_by_apply_change() -> None:
    payload = _payload()
    with pytest.raises(DownlinkError) as caught:
        apply_change(np.zeros(SIZE + 1, np.float32), payload, 8)
    assert caught.value.cause == protocol.CAUSE_DOWNLINK
    with pytest.raises(DownlinkError):
        apply_change(np.zeros(SIZE, np.float32), payload[:-1], 8)


def test_a_change_that_overflows_the_reference_is_refused() -> None:
    big = np.full(SIZE, 3e38, np.float32)
    payload, _ = encode_change(big, np.zeros(SIZE, np.float32), 8, np.random.default_rng(0))

    with pytest.raises(DownlinkError, match="overflows"):
        apply_change(big, payload, 8)


def test_the_header_layout_is_the_documented_one() -> None:
    header = DownlinkHeader(8, SIZE, 9, 3, 77, b"\x01" * 32, b"\x02" * 32, 5).pack()
    assert header == struct.pack(
        ">4sBBIQIQ32s32sI", b"FVDL", 1, 8, SIZE, 9, 3, 77, b"\x01" * 32, b"\x02" * 32, 5
    )
    assert HEADER_LEN == 98 and OVERHEAD == 98 + 64

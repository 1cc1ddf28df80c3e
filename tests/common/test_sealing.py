"""Tests of ``common.sealing``: round trips, plain RFC 9180 on the wire, every refusal reason."""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import pytest
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from common.crypto.aggregator_keys import AggregatorKeyPair
from common.crypto.hpke import ENC_LEN, SUITE_AEAD_ID, SUITE_KDF_ID, SUITE_KEM_ID, TAG_LEN
from common.sealed_header import (
    FORMAT_VERSION,
    HEADER_LEN,
    REASONS,
    CodecHeader,
    SealContext,
    SealError,
    read_header,
)
from common.sealing import open_update, seal_update
from tests.common.sealing_support import CODEC, CTX, assert_no_secret

# Header offsets of the v1 wire format, as the module docstring documents them.
OFF_VERSION, OFF_KEM, OFF_KDF, OFF_AEAD = 4, 5, 7, 9
OFF_TOPK, OFF_BITS, OFF_SIZE = 11, 19, 20
OFF_RUN, OFF_ROUND, OFF_NODE, OFF_PAYLOAD_LEN = 24, 32, 36, 44

MAX = 1 << 20


def _refusal(
    sealed: object, keypair: AggregatorKeyPair, expected: SealContext = CTX, max_payload: int = MAX
) -> SealError:
    with pytest.raises(SealError) as info:
        open_update(sealed, keypair=keypair, expected=expected, max_payload=max_payload)  # type: ignore[arg-type]
    err = info.value
    assert err.reason in REASONS
    assert "\n" not in str(err)
    return err


def _flip(blob: bytes, index: int, bit: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 1 << bit
    return bytes(out)


def _patch(blob: bytes, offset: int, fmt: str, value: Any) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.fixture(scope="module")
def keypair() -> AggregatorKeyPair:
    return AggregatorKeyPair.generate()


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(64)


@pytest.fixture(scope="module")
def sealed(keypair: AggregatorKeyPair, payload: bytes) -> bytes:
    return seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)


def test_a_sealed_update_is_plain_rfc9180_hpke(keypair: AggregatorKeyPair) -> None:
    """Any RFC 9180 implementation opens it: enc and ct at fixed offsets, info, header as aad."""
    payload = b"interop" * 9
    blob = seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)
    independent = CipherSuite.new(
        KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM
    )
    sk = KEMKey.from_pyca_cryptography_key(keypair._private)
    enc, ct = blob[HEADER_LEN : HEADER_LEN + ENC_LEN], blob[HEADER_LEN + ENC_LEN :]
    recipient = independent.create_recipient_context(enc, sk, info=CTX.info())
    assert recipient.open(ct, aad=blob[:HEADER_LEN]) == payload


# ------------------------------------------------------------------ wire format and round trips


def test_header_bytes_are_pinned(keypair: AggregatorKeyPair) -> None:
    ctx = SealContext(run_id=7, server_round=3, node_id=42)
    codec = CodecHeader(topk=0.1, bits=8, size=1000)
    blob = seal_update(b"x" * 50, public_key=keypair.public_bytes, context=ctx, codec=codec)
    expected = "".join(
        [
            "46565355",  # 0  magic "FVSU"
            "01",  # 4  version
            "0020",  # 5  kem_id
            "0001",  # 7  kdf_id
            "0002",  # 9  aead_id
            "3fb999999999999a",  # 11 topk = 0.1 as float64
            "08",  # 19 bits
            "000003e8",  # 20 size = 1000
            "0000000000000007",  # 24 run_id
            "00000003",  # 32 server_round
            "000000000000002a",  # 36 node_id = 42
            "00000032",  # 44 payload_len = 50
        ]
    )
    assert HEADER_LEN == 48
    assert blob[:HEADER_LEN].hex() == expected
    assert len(blob) == HEADER_LEN + ENC_LEN + 50 + TAG_LEN


def test_round_trip(keypair: AggregatorKeyPair) -> None:
    for size in (0, 1, 15, 16, 17, 1000, 100_000):
        payload = os.urandom(size)
        blob = seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)
        assert len(blob) == HEADER_LEN + ENC_LEN + size + TAG_LEN
        header, opened = open_update(blob, keypair=keypair, expected=CTX, max_payload=size)
        assert opened == payload
        suite = (header.kem_id, header.kdf_id, header.aead_id)
        assert suite == (SUITE_KEM_ID, SUITE_KDF_ID, SUITE_AEAD_ID)
        assert header.version == FORMAT_VERSION and header.payload_len == size
        assert header.codec == CODEC and header.context == CTX
        assert read_header(blob, max_payload=size) == header


def test_each_seal_is_fresh(keypair: AggregatorKeyPair) -> None:
    one = seal_update(b"same", public_key=keypair.public_bytes, context=CTX, codec=CODEC)
    two = seal_update(b"same", public_key=keypair.public_bytes, context=CTX, codec=CODEC)
    assert one[:HEADER_LEN] == two[:HEADER_LEN]
    assert one[HEADER_LEN : HEADER_LEN + ENC_LEN] != two[HEADER_LEN : HEADER_LEN + ENC_LEN]
    assert one[HEADER_LEN + ENC_LEN :] != two[HEADER_LEN + ENC_LEN :]


def test_buffers_are_accepted(keypair: AggregatorKeyPair) -> None:
    payload = bytearray(b"buffer" * 10)
    blob = seal_update(
        memoryview(payload), public_key=bytearray(keypair.public_bytes), context=CTX, codec=CODEC
    )
    for form in (bytearray(blob), memoryview(blob)):
        _, opened = open_update(form, keypair=keypair, expected=CTX, max_payload=MAX)  # type: ignore[arg-type]
        assert opened == bytes(payload)


def test_seal_update_refuses_bad_public_keys() -> None:
    for bad in (b"", b"\x01" * 31, b"\x01" * 33):
        with pytest.raises(ValueError, match="32 raw"):
            seal_update(b"p", public_key=bad, context=CTX, codec=CODEC)
    # A low-order point gives an all-zero shared secret: refused, not sealed.
    with pytest.raises(ValueError, match="not a usable X25519"):
        seal_update(b"p", public_key=bytes(32), context=CTX, codec=CODEC)
    with pytest.raises(TypeError):
        seal_update("text", public_key=bytes(32), context=CTX, codec=CODEC)  # type: ignore[arg-type]


# ------------------------------------------------------------------ every refusal reason


def test_flipped_bit_anywhere_after_the_header_is_tamper(
    keypair: AggregatorKeyPair, sealed: bytes
) -> None:
    for index in range(HEADER_LEN, len(sealed)):
        for bit in range(8):
            assert _refusal(_flip(sealed, index, bit), keypair).reason == "tamper"


def _allowed_reasons(index: int) -> set[str]:
    if index < OFF_VERSION:
        return {"malformed"}
    if index < OFF_TOPK:
        return {"version"}
    if index < OFF_SIZE:  # topk, bits: out of domain, or in domain but not what was sealed
        return {"malformed", "tamper"}
    if index < OFF_RUN:
        return {"tamper"}
    if index < OFF_NODE:  # a round can become 0
        return {"replay", "malformed"} if index >= OFF_ROUND else {"replay"}
    if index < OFF_PAYLOAD_LEN:
        return {"misroute"}
    return {"oversize", "malformed"}


def test_flipped_bit_in_the_header_is_refused_with_the_field_reason(
    keypair: AggregatorKeyPair, sealed: bytes
) -> None:
    seen: set[str] = set()
    for index in range(HEADER_LEN):
        for bit in range(8):
            reason = _refusal(_flip(sealed, index, bit), keypair).reason
            assert reason in _allowed_reasons(index), (index, bit, reason)
            seen.add(reason)
    assert seen == set(REASONS)


def test_old_round_is_replay(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    later = SealContext(run_id=CTX.run_id, server_round=CTX.server_round + 1, node_id=CTX.node_id)
    assert _refusal(sealed, keypair, expected=later).reason == "replay"
    earlier = SealContext(CTX.run_id, CTX.server_round - 1, CTX.node_id)
    assert _refusal(sealed, keypair, expected=earlier).reason == "replay"


def test_other_run_is_replay(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    other_run = SealContext(run_id=CTX.run_id + 1, server_round=CTX.server_round, node_id=1001)
    assert _refusal(sealed, keypair, expected=other_run).reason == "replay"


def test_sealed_for_node_b_presented_as_node_a_is_misroute(keypair: AggregatorKeyPair) -> None:
    node_a = SealContext(run_id=11, server_round=4, node_id=1)
    node_b = SealContext(run_id=11, server_round=4, node_id=2)
    blob_b = seal_update(
        b"b's update", public_key=keypair.public_bytes, context=node_b, codec=CODEC
    )
    assert _refusal(blob_b, keypair, expected=node_a).reason == "misroute"
    assert open_update(blob_b, keypair=keypair, expected=node_b, max_payload=MAX)[1] == (
        b"b's update"
    )


def test_a_header_rewritten_to_the_expected_context_is_tamper(
    keypair: AggregatorKeyPair, sealed: bytes
) -> None:
    """Relabelling an old or foreign update as the expected one fails the AEAD."""
    relabelled = [
        (OFF_ROUND, ">I", CTX.server_round + 1, SealContext(11, CTX.server_round + 1, 1001)),
        (OFF_RUN, ">Q", CTX.run_id + 1, SealContext(CTX.run_id + 1, 4, 1001)),
        (OFF_NODE, ">Q", 7, SealContext(11, 4, 7)),
    ]
    for offset, fmt, value, expected in relabelled:
        forged = _patch(sealed, offset, fmt, value)
        assert read_header(forged, max_payload=MAX).context == expected
        assert _refusal(forged, keypair, expected=expected).reason == "tamper"
    # Rewriting the codec parameters is caught the same way.
    assert _refusal(_patch(sealed, OFF_TOPK, ">d", 1.0), keypair).reason == "tamper"
    assert _refusal(_patch(sealed, OFF_BITS, ">B", 4), keypair).reason == "tamper"
    assert _refusal(_patch(sealed, OFF_SIZE, ">I", 1), keypair).reason == "tamper"


def test_a_spliced_header_is_tamper(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    # Same context and length, other codec parameters: the header parses, the AEAD refuses.
    codec = CodecHeader(topk=0.5, bits=4, size=CODEC.size)
    other = seal_update(os.urandom(64), public_key=keypair.public_bytes, context=CTX, codec=codec)
    assert other[:HEADER_LEN] != sealed[:HEADER_LEN]
    assert _refusal(other[:HEADER_LEN] + sealed[HEADER_LEN:], keypair).reason == "tamper"
    assert _refusal(sealed[:HEADER_LEN] + other[HEADER_LEN:], keypair).reason == "tamper"
    swapped_enc = sealed[:HEADER_LEN] + other[HEADER_LEN : HEADER_LEN + ENC_LEN]
    assert _refusal(swapped_enc + sealed[HEADER_LEN + ENC_LEN :], keypair).reason == "tamper"


def test_a_low_order_enc_is_tamper(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    for enc in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32):
        forged = sealed[:HEADER_LEN] + enc + sealed[HEADER_LEN + ENC_LEN :]
        assert _refusal(forged, keypair).reason == "tamper"


def test_truncated_is_malformed(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    cuts = {0, 1, 3, 4, 5, 10, 11, 47, 48, 49, 79, 80, 81, len(sealed) - TAG_LEN, len(sealed) - 1}
    for cut in sorted(cuts):
        assert _refusal(sealed[:cut], keypair).reason == "malformed", cut
    assert _refusal(sealed + b"\x00", keypair).reason == "malformed"
    assert _refusal(sealed + sealed, keypair).reason == "malformed"


def test_wrong_magic_is_malformed(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    for magic in (b"FVSV", b"fvsu", b"\x00\x00\x00\x00"):
        assert _refusal(magic + sealed[4:], keypair).reason == "malformed"


def test_wrong_version_byte_is_version(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    for version in (0, 2, 255):
        bumped = _patch(sealed, OFF_VERSION, ">B", version)
        assert _refusal(bumped, keypair).reason == "version"
        # Read before the length: a future version may have another header size.
        assert _refusal(bumped[:6], keypair).reason == "version"
        with pytest.raises(SealError) as info:
            read_header(bumped, max_payload=MAX)
        assert info.value.reason == "version"


def test_unknown_suite_is_version(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    for offset, value in ((OFF_KEM, 0x0010), (OFF_KDF, 0x0003), (OFF_AEAD, 0x0001)):
        assert _refusal(_patch(sealed, offset, ">H", value), keypair).reason == "version"


def test_payload_len_over_the_limit_is_oversize(keypair: AggregatorKeyPair) -> None:
    blob = seal_update(b"p" * 1000, public_key=keypair.public_bytes, context=CTX, codec=CODEC)
    assert _refusal(blob, keypair, max_payload=999).reason == "oversize"
    with pytest.raises(SealError) as info:
        read_header(blob, max_payload=999)
    assert info.value.reason == "oversize"
    assert open_update(blob, keypair=keypair, expected=CTX, max_payload=1000)[1] == b"p" * 1000
    # A short blob announcing a huge payload is refused on the announcement, before any use.
    huge = _patch(blob, OFF_PAYLOAD_LEN, ">I", 2**32 - 1)[:HEADER_LEN]
    assert _refusal(huge, keypair).reason == "oversize"


def test_invalid_header_fields_are_malformed(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    bad = [
        (OFF_TOPK, ">d", 0.0),
        (OFF_TOPK, ">d", -0.25),
        (OFF_TOPK, ">d", 1.5),
        (OFF_TOPK, ">d", math.nan),
        (OFF_TOPK, ">d", math.inf),
        (OFF_BITS, ">B", 0),
        (OFF_BITS, ">B", 33),
        (OFF_ROUND, ">I", 0),
    ]
    for offset, fmt, value in bad:
        assert _refusal(_patch(sealed, offset, fmt, value), keypair).reason == "malformed"


def test_wrong_key_pair_is_tamper(keypair: AggregatorKeyPair, sealed: bytes) -> None:
    stranger = AggregatorKeyPair.generate()
    err = _refusal(sealed, stranger)
    assert err.reason == "tamper"
    assert_no_secret(str(err), stranger)
    assert_no_secret(str(err), keypair)


def test_non_bytes_input_is_malformed(keypair: AggregatorKeyPair) -> None:
    for thing in ("FVSU" + "x" * 100, None, 123, [1, 2, 3]):
        assert _refusal(thing, keypair).reason == "malformed"

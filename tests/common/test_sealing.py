"""Tests of ``common.sealing``: RFC 9180 known answers, wire format, refusals, fuzz, key files."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import pickle
import re
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x448 import X448PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from common.crypto import hpke
from common.sealing import (
    ENC_LEN,
    FORMAT_VERSION,
    HEADER_LEN,
    INFO_LABEL,
    MAGIC,
    REASONS,
    SUITE_AEAD_ID,
    SUITE_KDF_ID,
    SUITE_KEM_ID,
    TAG_LEN,
    AggregatorKeyPair,
    CodecHeader,
    KeyFileExistsError,
    SealContext,
    SealedHeader,
    SealError,
    fingerprint,
    load_private_key,
    load_public_key,
    open_update,
    read_header,
    seal_update,
    write_keypair,
)

VECTORS_PATH = Path(__file__).parent / "data" / "rfc9180_x25519_sha256_aes256gcm.json"

# Header offsets of the v1 wire format, as the module docstring documents them.
OFF_VERSION, OFF_KEM, OFF_KDF, OFF_AEAD = 4, 5, 7, 9
OFF_TOPK, OFF_BITS, OFF_SIZE = 11, 19, 20
OFF_RUN, OFF_ROUND, OFF_NODE, OFF_PAYLOAD_LEN = 24, 32, 36, 44

CTX = SealContext(run_id=11, server_round=4, node_id=1001)
CODEC = CodecHeader(topk=0.25, bits=8, size=4096)
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


def _secret_spellings(keypair: AggregatorKeyPair) -> list[str]:
    raw = keypair.private_bytes()
    pem = keypair._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body = "".join(pem.decode().splitlines()[1:-1])
    b64 = base64.b64encode(raw).decode()
    b64url = base64.urlsafe_b64encode(raw).decode()
    return [
        raw.hex(),
        raw.hex().upper(),
        b64,
        b64.rstrip("="),
        b64url,
        b64url.rstrip("="),
        body,
        body[-24:],
        repr(raw),
    ]


def _assert_no_secret(text: str, keypair: AggregatorKeyPair) -> None:
    for spelling in _secret_spellings(keypair):
        assert spelling not in text


@pytest.fixture(scope="module")
def keypair() -> AggregatorKeyPair:
    return AggregatorKeyPair.generate()


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(64)


@pytest.fixture(scope="module")
def sealed(keypair: AggregatorKeyPair, payload: bytes) -> bytes:
    return seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)


# ------------------------------------------------------------------ RFC 9180 known answers


def _vectors() -> list[dict[str, Any]]:
    doc = json.loads(VECTORS_PATH.read_text())
    return [
        v
        for v in doc["vectors"]
        if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == (0, 0x20, 0x01, 0x02)
    ]


VECTORS = _vectors()
h = bytes.fromhex


def test_the_vector_file_covers_exactly_our_suite() -> None:
    assert len(VECTORS) >= 1
    assert (SUITE_KEM_ID, SUITE_KDF_ID, SUITE_AEAD_ID) == (0x0020, 0x0001, 0x0002)
    # The suite object that seal_update/open_update use is the one the vectors test.
    suite = hpke.SUITE
    assert (suite.kem.id.value, suite.kdf.id.value, suite.aead.id.value) == (0x20, 0x01, 0x02)
    for v in VECTORS:
        assert {e["seq"] for e in v["encryptions"]} >= {0, 1}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["enc"][:8])
def test_rfc9180_key_derivation(vector: dict[str, Any]) -> None:
    kem = hpke.SUITE.kem
    eph = kem.derive_key_pair(h(vector["ikmE"]))
    rec = kem.derive_key_pair(h(vector["ikmR"]))
    assert eph.private_key.to_private_bytes() == h(vector["skEm"])
    assert eph.public_key.to_public_bytes() == h(vector["pkEm"])
    assert rec.private_key.to_private_bytes() == h(vector["skRm"])
    assert rec.public_key.to_public_bytes() == h(vector["pkRm"])
    # And our key pair type agrees on the recipient's public key.
    assert AggregatorKeyPair.from_private_bytes(h(vector["skRm"])).public_bytes == h(vector["pkRm"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["enc"][:8])
def test_rfc9180_sender_reproduces_enc_ciphertexts_and_exports(vector: dict[str, Any]) -> None:
    suite = hpke.SUITE
    eph = suite.kem.derive_key_pair(h(vector["ikmE"]))
    pk_r = suite.kem.deserialize_public_key(h(vector["pkRm"]))
    enc, sender = suite.create_sender_context(pk_r, info=h(vector["info"]), eks=eph)
    assert enc == h(vector["enc"])
    by_seq = {e["seq"]: e for e in vector["encryptions"]}
    for seq in range(max(by_seq) + 1):
        if seq in by_seq:
            e = by_seq[seq]
            assert sender.seal(h(e["pt"]), aad=h(e["aad"])) == h(e["ct"]), f"seq {seq}"
        else:  # advance the nonce counter
            sender.seal(b"", aad=b"")
    for x in vector["exports"]:
        assert sender.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["enc"][:8])
def test_rfc9180_recipient_opens_the_vector_ciphertexts(vector: dict[str, Any]) -> None:
    # Independent of key derivation: the vector's own skRm and enc.
    suite = hpke.SUITE
    sk_r = KEMKey.from_pyca_cryptography_key(
        AggregatorKeyPair.from_private_bytes(h(vector["skRm"]))._private
    )
    first = vector["encryptions"][0]
    assert first["seq"] == 0
    fresh = suite.create_recipient_context(h(vector["enc"]), sk_r, info=h(vector["info"]))
    assert fresh.open(h(first["ct"]), aad=h(first["aad"])) == h(first["pt"])

    recipient = suite.create_recipient_context(h(vector["enc"]), sk_r, info=h(vector["info"]))
    contiguous = [e for i, e in enumerate(vector["encryptions"]) if e["seq"] == i]
    for e in contiguous:
        assert recipient.open(h(e["ct"]), aad=h(e["aad"])) == h(e["pt"])
    for x in vector["exports"]:
        assert recipient.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])

    # The known answer can fail: a different info or aad does not open.
    other_info = suite.create_recipient_context(h(vector["enc"]), sk_r, info=b"other")
    with pytest.raises(Exception, match="Failed to open"):
        other_info.open(h(first["ct"]), aad=h(first["aad"]))
    other_aad = suite.create_recipient_context(h(vector["enc"]), sk_r, info=h(vector["info"]))
    with pytest.raises(Exception, match="Failed to open"):
        other_aad.open(h(first["ct"]), aad=b"Count-1")


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


def test_info_is_label_and_fixed_width_context() -> None:
    info = SealContext(run_id=1, server_round=2, node_id=3).info()
    assert info == INFO_LABEL + h("0000000000000001000000020000000000000003")
    assert INFO_LABEL == b"fedveil/update/v1"
    top = SealContext(run_id=2**64 - 1, server_round=2**32 - 1, node_id=2**64 - 1).info()
    assert top == INFO_LABEL + b"\xff" * 20


@settings(max_examples=300, deadline=None, database=None)
@given(
    a=st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.integers(0, 2**64 - 1)),
    b=st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.integers(0, 2**64 - 1)),
)
def test_info_is_injective(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    assert (SealContext(*a).info() == SealContext(*b).info()) == (a == b)


def test_round_trip(keypair: AggregatorKeyPair) -> None:
    for size in (0, 1, 15, 16, 17, 1000, 100_000):
        payload = os.urandom(size)
        blob = seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)
        assert len(blob) == HEADER_LEN + ENC_LEN + size + TAG_LEN
        header, opened = open_update(blob, keypair=keypair, expected=CTX, max_payload=size)
        assert opened == payload
        assert header == SealedHeader(
            version=FORMAT_VERSION,
            kem_id=SUITE_KEM_ID,
            kdf_id=SUITE_KDF_ID,
            aead_id=SUITE_AEAD_ID,
            codec=CODEC,
            context=CTX,
            payload_len=size,
        )
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


TOPKS = st.one_of(
    st.sampled_from([1.0, 0.1, 0.5, 5e-324, math.nextafter(1.0, 0.0), 1e-300]),
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_subnormal=True),
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    topk=TOPKS,
    bits=st.integers(1, 32),
    size=st.integers(0, 2**32 - 1),
    run_id=st.integers(0, 2**64 - 1),
    server_round=st.integers(1, 2**32 - 1),
    node_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=64),
)
def test_header_round_trip(
    topk: float,
    bits: int,
    size: int,
    run_id: int,
    server_round: int,
    node_id: int,
    payload: bytes,
) -> None:
    keypair = _fuzz_world().keypair
    ctx = SealContext(run_id=run_id, server_round=server_round, node_id=node_id)
    codec = CodecHeader(topk=topk, bits=bits, size=size)
    blob = seal_update(payload, public_key=keypair.public_bytes, context=ctx, codec=codec)
    header = read_header(blob, max_payload=len(payload))
    assert header.codec == codec
    assert header.codec.topk == topk  # bit-exact: float64 on the wire
    assert header.context == ctx
    assert header.payload_len == len(payload)
    opened_header, opened = open_update(
        blob, keypair=keypair, expected=ctx, max_payload=len(payload)
    )
    assert (opened_header, opened) == (header, payload)


def test_invalid_parameters_are_refused_at_construction() -> None:
    for topk in (0.0, -0.0, -0.5, 1.0000000000000002, math.nan, math.inf, True, "0.5"):
        with pytest.raises(ValueError, match="topk"):
            CodecHeader(topk=topk, bits=8, size=10)  # type: ignore[arg-type]
    for bits in (0, 33, -1, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            CodecHeader(topk=0.5, bits=bits, size=10)  # type: ignore[arg-type]
    for size in (-1, 2**32, 1.5):
        with pytest.raises(ValueError, match="size"):
            CodecHeader(topk=0.5, bits=8, size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_round"):
        SealContext(run_id=1, server_round=0, node_id=1)
    with pytest.raises(ValueError, match="server_round"):
        SealContext(run_id=1, server_round=2**32, node_id=1)
    with pytest.raises(ValueError, match="run_id"):
        SealContext(run_id=-1, server_round=1, node_id=1)
    with pytest.raises(ValueError, match="node_id"):
        SealContext(run_id=1, server_round=1, node_id=2**64)


def test_seal_update_refuses_bad_public_keys() -> None:
    for bad in (b"", b"\x01" * 31, b"\x01" * 33):
        with pytest.raises(ValueError, match="32 raw"):
            seal_update(b"p", public_key=bad, context=CTX, codec=CODEC)
    # A low-order point gives an all-zero shared secret: refused, not sealed.
    with pytest.raises(ValueError, match="not a usable X25519"):
        seal_update(b"p", public_key=bytes(32), context=CTX, codec=CODEC)
    with pytest.raises(TypeError):
        seal_update("text", public_key=bytes(32), context=CTX, codec=CODEC)  # type: ignore[arg-type]


def test_fingerprint_format_and_stability(keypair: AggregatorKeyPair, tmp_path: Path) -> None:
    # Pinned: SHA-256 of the RFC 9180 vector's pkRm.
    pk_rm = h(VECTORS[0]["pkRm"])
    assert fingerprint(pk_rm) == (
        "sha256:69df8d73e7407153d44babaf63e78f7a37ea1cb4f043588b75b51b02f8f9ddc3"
    )
    assert fingerprint(pk_rm) == "sha256:" + hashlib.sha256(pk_rm).hexdigest()
    fp = keypair.fingerprint()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert fp == fingerprint(keypair.public_bytes) == keypair.fingerprint()
    key_path, pub_path = write_keypair(tmp_path, keypair)
    assert load_private_key(key_path).fingerprint() == fp
    assert fingerprint(load_public_key(pub_path)) == fp
    assert AggregatorKeyPair.generate().fingerprint() != fp
    for bad in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(ValueError, match="32"):
            fingerprint(bad)


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
    _assert_no_secret(str(err), stranger)
    _assert_no_secret(str(err), keypair)


def test_non_bytes_input_is_malformed(keypair: AggregatorKeyPair) -> None:
    for thing in ("FVSU" + "x" * 100, None, 123, [1, 2, 3]):
        assert _refusal(thing, keypair).reason == "malformed"


def test_seal_error_shape() -> None:
    assert REASONS == ("malformed", "version", "oversize", "replay", "misroute", "tamper")
    err = SealError("replay", "sealed for\nround 3")
    assert err.reason == "replay"
    assert "\n" not in str(err)
    assert "replay" in str(err)
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert (again.reason, str(again)) == (err.reason, str(err))
    with pytest.raises(ValueError, match="reason"):
        SealError("bogus")


# ---------------------------------------------------------------- fuzz: SealError only, no forgery

RANDOM_BUDGET, FORGED_BUDGET, MUTATED_BUDGET = 3000, 3000, 5000
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class _FuzzWorld:
    keypair: AggregatorKeyPair
    originals: tuple[tuple[bytes, bytes], ...]  # (sealed, payload)


@functools.cache
def _fuzz_world() -> _FuzzWorld:
    keypair = AggregatorKeyPair.generate()
    originals = []
    for size in (0, 1, 48):
        payload = os.urandom(size)
        blob = seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)
        originals.append((blob, payload))
    return _FuzzWorld(keypair=keypair, originals=tuple(originals))


def _must_refuse(blob: bytes) -> None:
    """Feed ``blob`` to open_update: it must raise SealError, and nothing else."""
    world = _fuzz_world()
    try:
        open_update(blob, keypair=world.keypair, expected=CTX, max_payload=4096)
    except SealError as err:
        assert err.reason in REASONS
        return
    raise AssertionError(f"accepted a forged update: {blob.hex()}")


def _run_counted(budget: int, strategy: st.SearchStrategy[Any], body: Callable[[Any], None]) -> int:
    calls = 0

    @settings(FUZZ, max_examples=budget)
    @given(strategy)
    def run(example: Any) -> None:
        nonlocal calls
        calls += 1
        body(example)

    run()
    return calls


def test_fuzz_random_bytes_are_refused() -> None:
    blobs = st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=200).map(lambda b: MAGIC + b),
        st.binary(max_size=200).map(lambda b: MAGIC + bytes([FORMAT_VERSION]) + b),
    )
    calls = _run_counted(RANDOM_BUDGET, blobs, _must_refuse)
    assert calls >= 0.95 * RANDOM_BUDGET


@st.composite
def _forged_updates(draw: st.DrawFn) -> bytes:
    """Well-formed headers naming the expected context over random enc and ciphertext."""
    length = draw(st.integers(0, 128))
    header = struct.pack(
        ">4sBHHHdBIQIQI",
        MAGIC,
        FORMAT_VERSION,
        SUITE_KEM_ID,
        SUITE_KDF_ID,
        SUITE_AEAD_ID,
        draw(TOPKS),
        draw(st.integers(1, 32)),
        draw(st.integers(0, 2**32 - 1)),
        CTX.run_id,
        CTX.server_round,
        CTX.node_id,
        length,
    )
    body = draw(st.binary(min_size=ENC_LEN + length + TAG_LEN, max_size=ENC_LEN + length + TAG_LEN))
    return header + body


def test_fuzz_well_formed_forgeries_are_tamper() -> None:
    def check(blob: bytes) -> None:
        world = _fuzz_world()
        with pytest.raises(SealError) as info:
            open_update(blob, keypair=world.keypair, expected=CTX, max_payload=4096)
        assert info.value.reason == "tamper"

    calls = _run_counted(FORGED_BUDGET, _forged_updates(), check)
    assert calls >= 0.95 * FORGED_BUDGET


def _mutate(blob: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(blob)
    for kind, pos, arg, data in ops:
        where = pos % (len(out) + 1)
        if kind == "xor" and out:
            out[where % len(out)] ^= arg or 1
        elif kind == "set" and out:
            out[where % len(out)] = arg
        elif kind == "insert":
            out[where:where] = data
        elif kind == "delete":
            del out[where : where + 1 + arg % 64]
        elif kind == "truncate":
            del out[where:]
        elif kind == "append":
            out += data
        elif kind == "duplicate":
            out[where:where] = out[where : where + 1 + arg % 64]
    return bytes(out)


MUTATIONS = st.tuples(
    st.integers(0, 2),  # which original
    st.lists(
        st.tuples(
            st.sampled_from(["xor", "set", "insert", "delete", "truncate", "append", "duplicate"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
            st.binary(min_size=1, max_size=16),
        ),
        min_size=0,
        max_size=4,
    ),
)


def test_fuzz_mutated_updates_never_open() -> None:
    opened_identities = 0

    def check(example: tuple[int, list[tuple[str, int, int, bytes]]]) -> None:
        nonlocal opened_identities
        which, ops = example
        world = _fuzz_world()
        original, payload = world.originals[which]
        mutated = _mutate(original, ops)
        if mutated == original:
            _, opened = open_update(mutated, keypair=world.keypair, expected=CTX, max_payload=4096)
            assert opened == payload
            opened_identities += 1
        else:
            _must_refuse(mutated)

    calls = _run_counted(MUTATED_BUDGET, MUTATIONS, check)
    assert calls >= 0.95 * MUTATED_BUDGET
    assert opened_identities >= 1  # the empty mutation list is always tried


def test_fuzz_budget_is_at_least_ten_thousand() -> None:
    assert 0.95 * (RANDOM_BUDGET + FORGED_BUDGET + MUTATED_BUDGET) >= 10_000


# ------------------------------------------------------------------ key files


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Let a test set the process umask; restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_write_keypair_modes_and_formats(
    tmp_path: Path, umask: Callable[[int], int], mask: int
) -> None:
    umask(mask)
    keypair = AggregatorKeyPair.generate()
    key_path, pub_path = write_keypair(tmp_path / "keys" / "nested", keypair)
    assert (key_path.name, pub_path.name) == ("aggregator.key", "aggregator.pub")
    assert _mode(key_path) == 0o600
    assert _mode(pub_path) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")  # SPKI
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["aggregator.key", "aggregator.pub"]


def test_load_round_trip(tmp_path: Path) -> None:
    keypair = AggregatorKeyPair.generate()
    key_path, pub_path = write_keypair(tmp_path, keypair)
    loaded = load_private_key(key_path)
    assert loaded.private_bytes() == keypair.private_bytes()
    assert loaded.public_bytes == keypair.public_bytes
    assert load_public_key(pub_path) == keypair.public_bytes
    # The loaded pair opens what was sealed to the written public key.
    blob = seal_update(b"u", public_key=load_public_key(pub_path), context=CTX, codec=CODEC)
    assert open_update(blob, keypair=loaded, expected=CTX, max_payload=1)[1] == b"u"
    # An owner-read-only key is fine too.
    key_path.chmod(0o400)
    assert load_private_key(key_path).public_bytes == keypair.public_bytes


def test_write_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    first = AggregatorKeyPair.generate()
    key_path, pub_path = write_keypair(tmp_path, first)
    key_before, pub_before = key_path.read_bytes(), pub_path.read_bytes()
    second = AggregatorKeyPair.generate()
    with pytest.raises(ValueError, match="refusing to overwrite") as info:
        write_keypair(tmp_path, second)
    assert isinstance(info.value, FileExistsError)
    assert isinstance(info.value, KeyFileExistsError)
    assert str(key_path) in str(info.value)
    assert "\n" not in str(info.value)
    assert key_path.read_bytes() == key_before
    assert pub_path.read_bytes() == pub_before
    assert load_private_key(key_path).private_bytes() == first.private_bytes()
    _assert_no_secret(str(info.value), first)
    _assert_no_secret(str(info.value), second)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o610])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    keypair = AggregatorKeyPair.generate()
    key_path, _ = write_keypair(tmp_path, keypair)
    key_path.chmod(mode)
    with pytest.raises(ValueError) as info:
        load_private_key(key_path)
    message = str(info.value)
    assert f"chmod 600 {key_path}" in message
    assert "\n" not in message
    _assert_no_secret(message, keypair)


def _wrong_private_files(tmp_path: Path, keypair: AggregatorKeyPair) -> dict[str, Path]:
    key_path, pub_path = write_keypair(tmp_path / "real", keypair)

    def put(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    ed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    x448 = X448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = keypair._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    raw_der = keypair._private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "missing": tmp_path / "nope.key",
        "directory": tmp_path / "real",
        "empty": put("empty.key", b""),
        "garbage": put("garbage.key", b"not a key at all\n"),
        "raw-bytes": put("raw.key", keypair.private_bytes()),
        "der": put("der.key", raw_der),
        "ed25519": put("ed.key", ed),
        "x448": put("x448.key", x448),
        "encrypted": put("enc.key", encrypted),
        "public-key": put("pub-as-private.key", pub_path.read_bytes()),
        "huge": put("huge.key", key_path.read_bytes() * 1000),
    }


def _assert_each_refused_in_one_line(
    load: Callable[[Path], object], cases: dict[str, Path], keypair: AggregatorKeyPair
) -> None:
    """``load`` refuses every file of ``cases`` with a one-line ValueError naming it, no secret."""
    for case, path in cases.items():
        with pytest.raises(ValueError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message, case
        assert "\n" not in message, case
        _assert_no_secret(message, keypair)


def test_wrong_private_key_files_are_one_line_value_errors_naming_the_file(tmp_path: Path) -> None:
    keypair = AggregatorKeyPair.generate()
    _assert_each_refused_in_one_line(
        load_private_key, _wrong_private_files(tmp_path, keypair), keypair
    )


def test_wrong_public_key_files_are_one_line_value_errors_naming_the_file(tmp_path: Path) -> None:
    keypair = AggregatorKeyPair.generate()
    key_path, _ = write_keypair(tmp_path / "real", keypair)
    ed_pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cases = {
        "missing": tmp_path / "nope.pub",
        "directory": tmp_path / "real",
        "empty": tmp_path / "empty.pub",
        "garbage": tmp_path / "garbage.pub",
        "raw-bytes": tmp_path / "raw.pub",
        "ed25519": tmp_path / "ed.pub",
        "private-key": key_path,
    }
    cases["empty"].write_bytes(b"")
    cases["garbage"].write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    cases["raw-bytes"].write_bytes(keypair.public_bytes)
    cases["ed25519"].write_bytes(ed_pub)
    _assert_each_refused_in_one_line(load_public_key, cases, keypair)


def test_repr_hides_the_private_key() -> None:
    keypair = AggregatorKeyPair.generate()
    for text in (repr(keypair), str(keypair), f"{keypair}", f"{keypair!r}", repr([keypair])):
        _assert_no_secret(text, keypair)
        assert keypair.fingerprint() in text
    assert not hasattr(keypair, "__dict__")


def test_from_private_bytes_checks_the_length() -> None:
    for raw in (b"", b"\x07" * 31, b"\x07" * 33):
        with pytest.raises(ValueError, match="32 raw bytes") as info:
            AggregatorKeyPair.from_private_bytes(raw)
        assert "0707" not in str(info.value)
    raw = os.urandom(32)
    assert AggregatorKeyPair.from_private_bytes(raw).private_bytes() == raw

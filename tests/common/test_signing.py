"""Tests of ``common.crypto.signing``: RFC 8032 vectors, the key derivation, opaque refusals."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from common.crypto.signing import (
    DERIVATION_INFO,
    BadSignature,
    SigningKey,
    derive_signing_key,
    fingerprint,
    verify,
)
from common.sealing import AggregatorKeyPair

# RFC 8032, section 7.1, TEST 1 and TEST 2: (secret key, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
        "701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
        "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors_sign_and_verify(
    secret: str, public: str, message: str, signature: str
) -> None:
    key = SigningKey.from_seed(bytes.fromhex(secret))

    assert key.public_bytes == bytes.fromhex(public)
    assert key.sign(bytes.fromhex(message)) == bytes.fromhex(signature)
    verify(bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message))


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_any_altered_byte_is_refused(
    secret: str, public: str, message: str, signature: str
) -> None:
    pk, sig, msg = bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message)
    for i in range(len(sig)):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        with pytest.raises(BadSignature):
            verify(pk, bytes(bad), msg)
    with pytest.raises(BadSignature):
        verify(pk, sig, msg + b"\x00")
    other = next(bytes.fromhex(v[1]) for v in RFC8032 if v[1] != public)
    with pytest.raises(BadSignature):
        verify(other, sig, msg)


@pytest.mark.parametrize(
    ("public", "signature"),
    [
        (b"", b"\x00" * 64),
        (b"\x00" * 31, b"\x00" * 64),
        (b"\x01" * 32, b"\x00" * 63),
        (b"\x01" * 32, b""),
    ],
    ids=["empty-key", "short-key", "short-signature", "empty-signature"],
)
def test_malformed_keys_and_signatures_are_the_same_opaque_refusal(
    public: bytes, signature: bytes
) -> None:
    with pytest.raises(BadSignature) as caught:
        verify(public, signature, b"message")
    assert str(caught.value) == ""


def test_the_signing_key_is_derived_from_the_aggregator_key_deterministically() -> None:
    keypair = AggregatorKeyPair.generate()

    first, again = derive_signing_key(keypair), derive_signing_key(keypair)
    other = derive_signing_key(AggregatorKeyPair.generate())

    assert first.public_bytes == again.public_bytes != other.public_bytes
    assert first.public_bytes != keypair.public_bytes
    assert first.fingerprint() == fingerprint(first.public_bytes)
    verify(first.public_bytes, first.sign(b"m"), b"m")
    with pytest.raises(BadSignature):
        verify(other.public_bytes, first.sign(b"m"), b"m")


def test_the_derivation_is_rfc5869_hkdf_sha256_of_the_x25519_private_key() -> None:
    # A reference HKDF from the standard library's HMAC: extract with the all-zeros salt
    # (RFC 5869 when no salt is given), then one expand block for a 32-byte seed.
    raw = bytes(range(32))
    prk = hmac.new(b"\x00" * 32, raw, hashlib.sha256).digest()
    seed = hmac.new(prk, DERIVATION_INFO + b"\x01", hashlib.sha256).digest()

    derived = derive_signing_key(AggregatorKeyPair.from_private_bytes(raw))

    assert derived.public_bytes == SigningKey.from_seed(seed).public_bytes
    assert DERIVATION_INFO == b"fedveil/downlink-signing/v1"


def test_the_repr_shows_no_secret() -> None:
    key = SigningKey.from_seed(b"\x05" * 32)

    assert repr(key) == f"SigningKey(public={key.fingerprint()})"
    assert "0505" not in repr(key)

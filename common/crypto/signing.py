"""Ed25519 signatures (RFC 8032) by the aggregator, derived from its X25519 key: no new key file.

:func:`derive_signing_key` turns the aggregator's X25519 private key into an Ed25519 seed with
HKDF-SHA256 (RFC 5869, no salt, info ``fedveil/downlink-signing/v1``), so the key files of
``fedveil keys generate`` keep serving both jobs and the two keys never share raw bytes.
:class:`SigningKey` signs; :func:`verify` checks a signature against a raw 32-byte public key
and raises the one opaque :class:`BadSignature` for every failure (wrong key, altered message,
malformed signature or key). Nodes pin the public key by :func:`fingerprint`, as they pin the
sealing key. Caveat: anyone holding the aggregator's private key can sign; the guarantee is
only as good as the pin.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.crypto.aggregator_keys import AggregatorKeyPair, fingerprint

__all__ = [
    "DERIVATION_INFO",
    "PUBLIC_KEY_LEN",
    "SIGNATURE_LEN",
    "BadSignature",
    "SigningKey",
    "derive_signing_key",
    "fingerprint",
    "verify",
]

DERIVATION_INFO: Final = b"fedveil/downlink-signing/v1"
PUBLIC_KEY_LEN: Final = 32
SIGNATURE_LEN: Final = 64
_SEED_LEN: Final = 32


class BadSignature(Exception):  # noqa: N818 (one opaque verdict, like Fernet's InvalidToken)
    """The signature does not verify; which check failed is never told."""


class SigningKey:
    """An Ed25519 private key; its ``repr`` shows only the public fingerprint."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("SigningKey needs a cryptography Ed25519PrivateKey")
        self._private = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Return the key of a raw 32-byte RFC 8032 seed (``ValueError`` otherwise)."""
        if not isinstance(seed, bytes) or len(seed) != _SEED_LEN:
            raise ValueError("an Ed25519 seed is 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key, what nodes verify with and pin."""
        return self._public

    def fingerprint(self) -> str:
        """Return ``fingerprint(self.public_bytes)``: ``sha256:`` + hex."""
        return fingerprint(self._public)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.fingerprint()})"

    __str__ = __repr__


def derive_signing_key(keypair: AggregatorKeyPair) -> SigningKey:
    """Return the aggregator's Ed25519 signing key, derived from its X25519 private key.

    The same key pair always gives the same signing key, so a node's pin survives a restart
    of the server with the same key file.
    """
    if not isinstance(keypair, AggregatorKeyPair):
        raise TypeError("derive_signing_key needs an AggregatorKeyPair")
    seed = HKDF(
        algorithm=hashes.SHA256(), length=_SEED_LEN, salt=None, info=DERIVATION_INFO
    ).derive(keypair.private_bytes())
    return SigningKey.from_seed(seed)


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Check ``signature`` of ``message`` under a raw 32-byte Ed25519 ``public_key``.

    Raises:
        BadSignature: For every failure, whatever its cause.

    """
    try:
        if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
            raise BadSignature
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), bytes(message)
        )
    except (InvalidSignature, ValueError, TypeError, BadSignature):
        raise BadSignature from None

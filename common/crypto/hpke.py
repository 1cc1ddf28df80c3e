"""HPKE base mode (RFC 9180) with one fixed suite, via ``pyhpke``: single-shot seal and open.

Suite: DHKEM(X25519, HKDF-SHA256) (``0x0020``), HKDF-SHA256 (``0x0001``), AES-256-GCM
(``0x0002``). Each seal uses a fresh ephemeral key; ``enc`` is ``ENC_LEN`` bytes and the
ciphertext is the plaintext plus a ``TAG_LEN``-byte tag. Every failure to open is the same opaque
:class:`OpenError`: which check failed is never told. Moving to ``cryptography``'s own HPKE (or a
hybrid post-quantum KEM) is a change of this module and of the suite ids in the wire format.
"""

from __future__ import annotations

from typing import Final, cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from common.crypto.aggregator_keys import X25519_LEN, AggregatorKeyPair

SUITE_KEM_ID: Final = 0x0020
SUITE_KDF_ID: Final = 0x0001
SUITE_AEAD_ID: Final = 0x0002
ENC_LEN: Final = 32
TAG_LEN: Final = 16
MAX_PLAINTEXT_LEN: Final = 2**31 - 1
"""AES-GCM as implemented by ``cryptography`` takes at most this many bytes in one call."""

SUITE: Final = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)


class OpenError(Exception):
    """The ciphertext did not open: altered bytes, another ``info`` or ``aad``, or another key."""


def seal(
    public_key: bytes | bytearray | memoryview, plaintext: bytes, *, info: bytes, aad: bytes
) -> tuple[bytes, bytes]:
    """Seal ``plaintext`` to a raw 32-byte X25519 ``public_key``; return ``(enc, ciphertext)``.

    Raises:
        ValueError: ``public_key`` is not 32 bytes or not a usable X25519 point.

    """
    raw = bytes(public_key)
    if len(raw) != X25519_LEN:
        raise ValueError(f"a public key is 32 raw X25519 bytes, got {len(raw)}")
    try:
        recipient = KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(raw))
        enc, sender = SUITE.create_sender_context(recipient, info=info)
    except ValueError:
        raise ValueError("the public key is not a usable X25519 public key") from None
    return enc, sender.seal(plaintext, aad=aad)


def open_sealed(
    keypair: AggregatorKeyPair,
    enc: bytes,
    ciphertext: memoryview,
    *,
    info: bytes,
    aad: memoryview,
) -> bytes:
    """Open what :func:`seal` made for ``keypair``'s public key with the same ``info`` and ``aad``.

    Raises:
        OpenError: For every failure, whatever its cause.

    """
    try:
        recipient = KEMKey.from_pyca_cryptography_key(keypair._private)
        context = SUITE.create_recipient_context(enc, recipient, info=info)
        # pyhpke hands both to cryptography's AESGCM, which takes any buffer: no copy of a
        # large ciphertext.
        return context.open(cast("bytes", ciphertext), aad=cast("bytes", aad))
    except Exception:  # every HPKE failure is the same opaque refusal
        raise OpenError from None

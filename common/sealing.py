"""End-to-end sealing of model updates to the aggregator: HPKE base mode, RFC 9180.

A client seals its (already compressed, already DP) update to the aggregator's X25519 public
key with :func:`seal_update`; the Flower SuperLink relays the bytes but can neither read nor
alter them. :func:`open_update` checks sizes before allocating anything, compares the claimed
run, round and sender with the expected ones before any cryptography, then opens with the
context bound into the HPKE ``info`` (``fedveil/update/v1`` | run | round | node) and the whole
header as associated data. So an unchanged old ciphertext is refused as ``replay``, one sealed
for another node as ``misroute``, any altered byte as ``tamper``; every refusal is a
:class:`SealError` naming its reason, never key material. Caveat: the guarantee is only as good
as the public key the client seals to: pin its fingerprint (``aggregator-fingerprint``).
Wire format and design: docs/sealing.md. Low-level cryptography lives in ``common.crypto``.
"""

from __future__ import annotations

from common.crypto.aggregator_keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AggregatorKeyPair,
    KeyFileExistsError,
    fingerprint,
    load_private_key,
    load_public_key,
    write_keypair,
)
from common.crypto.hpke import (
    ENC_LEN,
    SUITE_AEAD_ID,
    SUITE_KDF_ID,
    SUITE_KEM_ID,
    TAG_LEN,
    OpenError,
    open_sealed,
    seal,
)
from common.sealed_header import (
    FORMAT_VERSION,
    HEADER_LEN,
    INFO_LABEL,
    MAGIC,
    MAX_PAYLOAD_LEN,
    REASONS,
    CodecHeader,
    SealContext,
    SealedHeader,
    SealError,
    as_bytes_view,
    encode_header,
    parse_header,
    read_header,
)

__all__ = [
    "ENC_LEN",
    "FORMAT_VERSION",
    "HEADER_LEN",
    "INFO_LABEL",
    "MAGIC",
    "MAX_PAYLOAD_LEN",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "REASONS",
    "SUITE_AEAD_ID",
    "SUITE_KDF_ID",
    "SUITE_KEM_ID",
    "TAG_LEN",
    "AggregatorKeyPair",
    "CodecHeader",
    "KeyFileExistsError",
    "SealContext",
    "SealError",
    "SealedHeader",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "open_update",
    "read_header",
    "seal_update",
    "write_keypair",
]


def seal_update(
    payload: bytes | bytearray | memoryview,
    *,
    public_key: bytes | bytearray | memoryview,
    context: SealContext,
    codec: CodecHeader,
) -> bytes:
    """Seal ``payload`` to the aggregator's raw X25519 ``public_key``.

    Returns ``header || enc || ciphertext``, with the HPKE ``info`` set to ``context.info()``
    and the whole header as the AEAD's associated data. Each call uses a fresh ephemeral key.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``public_key`` is not 32 bytes or not a usable X25519 point, or the payload
            exceeds ``MAX_PAYLOAD_LEN`` bytes.

    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError("the payload must be bytes")
    if not isinstance(context, SealContext) or not isinstance(codec, CodecHeader):
        raise TypeError("seal_update needs a SealContext and a CodecHeader")
    if not isinstance(public_key, bytes | bytearray | memoryview):
        raise ValueError("the public key must be given as 32 raw X25519 bytes")
    payload_view = memoryview(payload).cast("B")
    if payload_view.nbytes > MAX_PAYLOAD_LEN:
        raise ValueError(
            f"the payload is {payload_view.nbytes} bytes; at most {MAX_PAYLOAD_LEN} can be sealed"
        )
    header = encode_header(codec, context, payload_view.nbytes)
    plaintext = payload if isinstance(payload, bytes) else payload_view.tobytes()
    enc, ciphertext = seal(public_key, plaintext, info=context.info(), aad=header)
    return b"".join((header, enc, ciphertext))


def open_update(
    sealed: bytes, *, keypair: AggregatorKeyPair, expected: SealContext, max_payload: int
) -> tuple[SealedHeader, bytes]:
    """Check and open a sealed update for the ``expected`` run, round and sender.

    Returns:
        The (now authenticated) header and the payload.

    Raises:
        SealError: Anything wrong with ``sealed``, and nothing else for any bytes: the reasons of
            ``read_header``, then ``replay`` (another run or round), ``misroute`` (another
            sender), ``tamper`` (the HPKE open failed: altered bytes or the wrong key).
        TypeError, ValueError: ``keypair``, ``expected`` or ``max_payload`` is invalid.

    """
    if not isinstance(keypair, AggregatorKeyPair):
        raise TypeError("open_update needs an AggregatorKeyPair")
    if not isinstance(expected, SealContext):
        raise TypeError("open_update needs the expected SealContext")
    view = as_bytes_view(sealed)
    header = parse_header(view, max_payload)
    claimed = header.context
    if claimed.run_id != expected.run_id or claimed.server_round != expected.server_round:
        raise SealError(
            "replay",
            f"sealed for run {claimed.run_id} round {claimed.server_round}, "
            f"expected run {expected.run_id} round {expected.server_round}",
        )
    if claimed.node_id != expected.node_id:
        raise SealError(
            "misroute", f"sealed by node {claimed.node_id}, expected node {expected.node_id}"
        )
    try:
        payload = open_sealed(
            keypair,
            bytes(view[HEADER_LEN : HEADER_LEN + ENC_LEN]),
            view[HEADER_LEN + ENC_LEN :],
            info=expected.info(),
            aad=view[:HEADER_LEN],
        )
    except OpenError:
        raise SealError(
            "tamper", "decryption failed: altered in transit or sealed to another key"
        ) from None
    if len(payload) != header.payload_len:  # cannot happen with a sound AEAD; never trust it
        raise SealError("tamper", "decrypted length differs from the header")
    return header, payload

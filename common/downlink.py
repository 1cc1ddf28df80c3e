"""The signed downlink: the global model sent to a node as a change from a reference it holds.

A reference is a flat ``float32`` model vector (``state_dict`` order) named by its
:func:`digest` (SHA-256 of its little-endian bytes); the all-zeros vector is the base every
node holds. :func:`encode_change` quantizes ``global - base`` with :mod:`common.codec` (dense,
or only inside a round's shared subspace when the model moved only there; stochastic
rounding); the new reference is ``base + decoded``, which
:func:`apply_change` recomputes bit for bit on the node (decoding is deterministic). A blob is
``header | payload | signature``; the aggregator signs :func:`signed_message` (a domain tag,
the whole header: run, round, node, base and target digests, and SHA-256 of the payload) with
Ed25519 (:mod:`common.crypto.signing`). :func:`open_blob` checks lengths, then the signature,
then the context, before anything is decoded; every refusal is a :class:`DownlinkError` whose
``cause`` is ``downlink`` (corrupt, truncated, altered, misaddressed) or ``downlink-base`` (the
node lacks the base). The downlink is post-processing of DP outputs: authenticated, not secret.
Byte layout and threat model: docs/downlink.md.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

from common import protocol
from common.codec import (
    CodecError,
    CodecParams,
    Float32Array,
    claimed_kept,
    decode_update,
    encode_update,
)
from common.crypto.signing import SIGNATURE_LEN, BadSignature, SigningKey, verify

MAGIC: Final = b"FVDL"
VERSION: Final = 1
DOMAIN: Final = b"fedveil/downlink/v1"
DIGEST_LEN: Final = 32
DENSE_BITS: Final = 32
"""Bits per value in the header when ``codec.downlink-bits`` is 0: raw float32 from zeros."""
# magic, version, bits, size, run id, round, node id, base digest, target digest, payload length
_HEADER: Final = struct.Struct(">4sBBIQIQ32s32sI")
HEADER_LEN: Final = _HEADER.size
OVERHEAD: Final = HEADER_LEN + SIGNATURE_LEN
"""Bytes a blob adds to its codec payload."""


class DownlinkError(ValueError):
    """A downlink the node must refuse; ``cause`` is the refusal cause it replies with."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


@dataclass(frozen=True)
class DownlinkHeader:
    """What a blob says about itself; all of it is signed."""

    bits: int
    size: int
    run_id: int
    server_round: int
    node_id: int
    base: bytes
    target: bytes
    payload_len: int

    def pack(self) -> bytes:
        """Return the header's bytes (big-endian)."""
        return _HEADER.pack(
            MAGIC,
            VERSION,
            self.bits,
            self.size,
            self.run_id,
            self.server_round,
            self.node_id,
            self.base,
            self.target,
            self.payload_len,
        )


def digest(vector: Float32Array) -> bytes:
    """Return SHA-256 of a flat vector's little-endian ``float32`` bytes: a reference's name."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).digest()


@functools.lru_cache(maxsize=8)  # asked once per node a round on the server: hash once per size
def zero_digest(size: int) -> bytes:
    """Return the digest of the all-zeros reference of ``size`` coordinates."""
    return digest(np.zeros(size, dtype=np.float32))


@dataclass(frozen=True)
class Subspace:
    """The coordinates a sparse change is confined to: a seeded mask (``common.subspace``)."""

    seed: bytes
    fraction: float


def codec_params(bits: int, fraction: float = 1.0) -> CodecParams:
    """Return the codec of a downlink with ``bits`` per value (``DENSE_BITS``: raw float32).

    ``fraction`` < 1 is a change confined to a subspace of that fraction of the coordinates.
    """
    return CodecParams(topk=fraction, bits=bits, mask="subspace" if fraction < 1 else "topk")


def encode_change(
    target: Float32Array,
    base: Float32Array,
    bits: int,
    rng: np.random.Generator,
    subspace: Subspace | None = None,
) -> tuple[bytes, Float32Array]:
    """Encode ``target - base``; return the payload and the reference the node will rebuild.

    Args:
        target: The global model, flat ``float32``.
        base: The reference the node holds, same shape.
        bits: Bits per value (1-8, 16, or ``DENSE_BITS``).
        rng: Drives the stochastic rounding; seeded from OS entropy outside tests.
        subspace: Send only the change inside this subspace (no index bytes: the payload
            carries its seed). The change outside is not sent, so the caller must know it is
            zero there (or accept that the node's reference keeps the old values).

    """
    change = np.subtract(target, base, dtype=np.float32)
    if subspace is None:
        encoded = encode_update(change, codec_params(bits), rng)
    else:
        params = codec_params(bits, subspace.fraction)
        encoded = encode_update(change, params, rng, mask_seed=subspace.seed)
    return encoded.payload, np.add(base, encoded.decoded, dtype=np.float32)


def apply_change(
    base: Float32Array, payload: bytes, bits: int, fraction: float = 1.0
) -> Float32Array:
    """Return ``base + decode(payload)``, bit-identical to what :func:`encode_change` returned.

    Args:
        base: The reference the payload's change starts from.
        payload: The signed blob's codec payload.
        bits: Bits per value, from the signed header.
        fraction: The run's subspace fraction (``codec.topk`` under ``codec.mask =
            "subspace"``); a payload keeping fewer than every value must keep exactly that.

    Raises:
        DownlinkError: ``downlink``: the payload does not decode to ``base.size`` finite values.

    """
    size = int(base.size)
    try:
        sparse = claimed_kept(payload) != size
        params = codec_params(bits, fraction if sparse else 1.0)
        change = decode_update(payload, size=size, params=params)
    except CodecError as exc:
        raise DownlinkError(protocol.CAUSE_DOWNLINK, f"model payload is corrupt ({exc})") from None
    new = np.add(base, change, dtype=np.float32)
    if not np.isfinite(new).all():
        raise DownlinkError(protocol.CAUSE_DOWNLINK, "model payload overflows the reference")
    return new


def signed_message(header: bytes, payload_hash: bytes) -> bytes:
    """Return what the aggregator signs: domain tag, the header, SHA-256 of the payload."""
    return DOMAIN + header + payload_hash


def signed_blob(header: bytes, payload: bytes, payload_hash: bytes, signer: SigningKey) -> bytes:
    """Return the blob :func:`open_blob` reads: header, payload, the signature over both.

    ``payload_hash`` is SHA-256 of ``payload``, passed in because the server hashes a change
    once and signs it for every node that gets it.
    """
    return header + payload + signer.sign(signed_message(header, payload_hash))


@dataclass(frozen=True)
class Expected:
    """What the node knows the blob must say: its run, round, node id and model size."""

    run_id: int
    server_round: int
    node_id: int
    size: int


def open_blob(blob: bytes, public_key: bytes, expected: Expected) -> tuple[DownlinkHeader, bytes]:
    """Check a blob from an untrusted relay; return its header and payload.

    Order: lengths, then the signature (nothing else is interpreted before it verifies), then
    version, bits, size and context (run, round, node) against ``expected``.

    Raises:
        DownlinkError: ``downlink``, with the check that failed.

    """
    if not isinstance(blob, bytes) or len(blob) < OVERHEAD:
        raise DownlinkError(protocol.CAUSE_DOWNLINK, "model payload is truncated")
    fields = _HEADER.unpack_from(blob)
    magic, payload_len = fields[0], fields[-1]
    if magic != MAGIC or len(blob) != OVERHEAD + payload_len:
        raise DownlinkError(protocol.CAUSE_DOWNLINK, "model payload is truncated or malformed")
    header_bytes = blob[:HEADER_LEN]
    payload = blob[HEADER_LEN : HEADER_LEN + payload_len]
    signature = blob[HEADER_LEN + payload_len :]
    try:
        verify(
            public_key, signature, signed_message(header_bytes, hashlib.sha256(payload).digest())
        )
    except BadSignature:
        raise DownlinkError(
            protocol.CAUSE_DOWNLINK, "model payload's signature does not verify"
        ) from None
    header = DownlinkHeader(fields[2], *fields[3:])
    if fields[1] != VERSION:
        raise DownlinkError(protocol.CAUSE_DOWNLINK, f"unsupported downlink version {fields[1]}")
    if header.bits not in (*range(1, 9), 16, DENSE_BITS):
        raise DownlinkError(protocol.CAUSE_DOWNLINK, f"unsupported {header.bits} bits per value")
    claimed = (header.run_id, header.server_round, header.node_id, header.size)
    wanted = (expected.run_id, expected.server_round, expected.node_id, expected.size)
    if claimed != wanted:
        raise DownlinkError(
            protocol.CAUSE_DOWNLINK,
            f"model payload is for run {claimed[0]}, round {claimed[1]}, node {claimed[2]}, "
            f"size {claimed[3]}; expected {wanted[0]}, {wanted[1]}, {wanted[2]}, {wanted[3]}",
        )
    return header, payload

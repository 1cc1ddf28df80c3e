"""The codec benchmark's microbenchmarks: codec, envelope, HPKE and raw AES-256-GCM throughput.

For each codec setting and vector size: encode and decode MB/s of a float32 update-like vector;
on the resulting payload (and on dense payloads of random bits, which zstd cannot shrink),
seal+open MB/s of the envelope (``seal_client_update`` + ``open_client_update``, which also
decodes and validates), of HPKE alone (``seal_update`` + ``open_update``) and of raw
AES-256-GCM encrypt+decrypt. MB are 10**6 bytes; each time is the median of repeated
``time.perf_counter`` samples. The raw-AES reference is the only low-level crypto import
outside ``common.sealing``: it measures the floor sealing is compared with and protects nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.table import Table

from common.codec import CodecParams, EncodedUpdate, Float32Array, decode_update, encode_update
from common.crypto.signing import SigningKey
from common.downlink import (
    DENSE_BITS,
    DownlinkHeader,
    Expected,
    Subspace,
    apply_change,
    digest,
    encode_change,
    open_blob,
    signed_blob,
)
from common.envelope import DPFacts, open_client_update, seal_client_update
from common.sealing import AggregatorKeyPair, CodecHeader, SealContext, open_update, seal_update
from common.subspace import MODE, round_mask, round_seed

MB = 1e6
DENSE_F32 = CodecParams(topk=1.0, bits=32)
"""How the raw dense payloads are declared in their envelope."""

# What the facts inside a sealed update look like; their values do not change the cost.
_FACTS = DPFacts(noise_multiplier=1.0, sample_rate=0.02, steps=100, epsilon=1.0)
_CONTEXT = SealContext(run_id=1, server_round=1, node_id=1)


@dataclass(frozen=True)
class MicroRow:
    """Codec and sealing throughput on one vector (codec fields are ``None`` for raw rows)."""

    label: str
    size: int
    payload_bytes: int
    encode_mb_s: float | None
    decode_mb_s: float | None
    seal_open_mb_s: float
    hpke_mb_s: float
    aes_gcm_mb_s: float


def median_seconds(action: Callable[[], object], repeats: int, min_sample: float = 0.02) -> float:
    """Return the median seconds of one ``action()`` over ``repeats`` samples.

    One warm-up call sizes each sample to at least ``min_sample`` seconds (many calls per sample
    for fast actions), so the timer's resolution never dominates.
    """
    start = time.perf_counter()
    action()
    first = time.perf_counter() - start
    inner = max(1, min(10_000, math.ceil(min_sample / max(first, 1e-9))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            action()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def update_vector(size: int, rng: np.random.Generator) -> Float32Array:
    """Return a dense float32 update-like vector: Gaussian, weight-update magnitudes."""
    return (rng.standard_normal(size) * 1e-2).astype(np.float32)


def incompressible_vector(nbytes: int, rng: np.random.Generator) -> Float32Array:
    """Return finite float32 values with random bit patterns: zstd cannot shrink them much."""
    bits = rng.integers(0, 0x7F80_0000, size=nbytes // 4, dtype=np.uint32)
    bits |= rng.integers(0, 2, size=bits.size, dtype=np.uint32) << np.uint32(31)
    return bits.view(np.float32)


def seal_open_seconds(
    payload: bytes, params: CodecParams, size: int, keypair: AggregatorKeyPair, repeats: int
) -> float:
    """Median seconds to seal one encoded update with its DP facts, then open and decode it."""
    return median_seconds(lambda: _seal_and_open(payload, params, size, keypair), repeats)


def _seal_and_open(
    payload: bytes, params: CodecParams, size: int, keypair: AggregatorKeyPair
) -> None:
    sealed = seal_client_update(
        payload,
        facts=_FACTS,
        params=params,
        size=size,
        public_key=keypair.public_bytes,
        context=_CONTEXT,
    )
    open_client_update(sealed, keypair=keypair, expected=_CONTEXT, params=params, size=size)


def hpke_seconds(
    payload: bytes, params: CodecParams, size: int, keypair: AggregatorKeyPair, repeats: int
) -> float:
    """Median seconds of HPKE alone: ``seal_update`` then ``open_update``, no decoding."""
    header = CodecHeader(topk=params.topk, bits=params.bits, size=size)

    def round_trip() -> None:
        sealed = seal_update(
            payload, public_key=keypair.public_bytes, context=_CONTEXT, codec=header
        )
        open_update(sealed, keypair=keypair, expected=_CONTEXT, max_payload=len(payload))

    return median_seconds(round_trip, repeats)


def aes_gcm_seconds(nbytes: int, repeats: int) -> float:
    """Median seconds of raw AES-256-GCM encrypt then decrypt of ``nbytes`` random bytes."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    data = os.urandom(nbytes)
    counter = itertools.count()

    def round_trip() -> None:
        nonce = next(counter).to_bytes(12, "big")  # never reused under one key
        aead.decrypt(nonce, aead.encrypt(nonce, data, None), None)

    return median_seconds(round_trip, repeats)


def sealing_row(
    label: str,
    vector: Float32Array,
    params: CodecParams,
    keypair: AggregatorKeyPair,
    repeats: int,
    rng: np.random.Generator,
    *,
    with_codec: bool,
) -> MicroRow:
    """Measure one vector under ``params``: codec MB/s (``with_codec``), then the sealing rows."""
    size = vector.size
    payload = _encode(vector, params, rng).payload
    encode_mb_s = decode_mb_s = None
    if with_codec:
        dense_bytes = 4 * size
        encode_s = median_seconds(lambda: _encode(vector, params, rng), repeats)
        decode_s = median_seconds(lambda: decode_update(payload, size=size, params=params), repeats)
        encode_mb_s, decode_mb_s = dense_bytes / encode_s / MB, dense_bytes / decode_s / MB
    n = len(payload)
    return MicroRow(
        label=label,
        size=size,
        payload_bytes=n,
        encode_mb_s=encode_mb_s,
        decode_mb_s=decode_mb_s,
        seal_open_mb_s=n / seal_open_seconds(payload, params, size, keypair, repeats) / MB,
        hpke_mb_s=n / hpke_seconds(payload, params, size, keypair, repeats) / MB,
        aes_gcm_mb_s=n / aes_gcm_seconds(n, repeats) / MB,
    )


def microbench(
    settings: Sequence[tuple[str, CodecParams]],
    sizes: Sequence[int],
    raw_sizes: Sequence[int],
    keypair: AggregatorKeyPair,
    *,
    repeats: int,
    seed: int,
) -> list[MicroRow]:
    """Codec rows (each named setting x vector size), then raw dense payloads of ``raw_sizes``."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        vector = update_vector(size, rng)
        for label, params in settings:
            rows.append(sealing_row(label, vector, params, keypair, repeats, rng, with_codec=True))
    for nbytes in raw_sizes:
        vector = incompressible_vector(nbytes, rng)
        label = f"raw {nbytes / 2**20:g} MiB"
        rows.append(sealing_row(label, vector, DENSE_F32, keypair, repeats, rng, with_codec=False))
    return rows


def _encode(vector: Float32Array, params: CodecParams, rng: np.random.Generator) -> EncodedUpdate:
    """Encode as a client does; a subspace update is measured under run 0, round 1's mask."""
    seed = round_seed(0, 1) if params.mask == MODE else None
    return encode_update(vector, params, rng, mask_seed=seed)


def update_codec_seconds(
    params: CodecParams, size: int, keypair: AggregatorKeyPair, repeats: int, seed: int
) -> float:
    """Median seconds to encode one update of ``size`` coordinates, seal, open and decode it."""
    rng = np.random.default_rng(seed)
    vector = update_vector(size, rng)

    def round_trip() -> None:
        _seal_and_open(_encode(vector, params, rng).payload, params, size, keypair)

    return median_seconds(round_trip, repeats)


def downlink_seconds(
    size: int, bits: int, fraction: float | None, clients: float, repeats: int, seed: int
) -> float:
    """Median seconds the signed downlink costs per node and round, at both ends.

    A node one round behind (the steady state when every client trains every round) gets the
    model's change since its reference: the server encodes it once a round and hashes the new
    reference, a cost shared by the round's ``clients``; per node it signs a blob, which the
    node verifies, finds its reference by digest, decodes onto it and checks the rebuilt
    model's digest. Not counted: the node's reading and writing of its references on disk.

    Args:
        size: Model coordinates.
        bits: ``codec.downlink-bits`` (0: raw float32, sent whole rather than as a change).
        fraction: The subspace the change lies in (``codec.topk`` under ``codec.mask =
            "subspace"``), or ``None`` for a change on every coordinate.
        clients: Nodes per round that share the server's per-round work.
        repeats: Timing samples.
        seed: Seeds the model and its change.

    """
    rng = np.random.default_rng(seed)
    bits = DENSE_BITS if bits == 0 else bits
    # Raw float32 is sent whole, as a change from zeros.
    if bits == DENSE_BITS:
        base = np.zeros(size, dtype=np.float32)
    else:
        base = update_vector(size, rng) * np.float32(100)
    change = update_vector(size, rng)
    subspace = None
    if fraction is not None:
        subspace = Subspace(round_seed(0, 1), fraction)
        change[~round_mask(0, 1, size, fraction)] = 0
    target = base + change
    signer = SigningKey.from_seed(bytes(32))
    expected = Expected(run_id=1, server_round=2, node_id=1, size=size)

    def per_round() -> tuple[bytes, bytes]:
        payload, reference = encode_change(target, base, bits, rng, subspace)
        return payload, digest(reference)

    base_digest = digest(base)  # the server keeps each reference's digest

    def per_node(payload: bytes, target_digest: bytes) -> None:
        header = DownlinkHeader(bits, size, 1, 2, 1, base_digest, target_digest, len(payload))
        payload_hash = hashlib.sha256(payload).digest()
        blob = signed_blob(header.pack(), payload, payload_hash, signer)
        got, body = open_blob(blob, signer.public_bytes, expected)
        # The node names its held reference by hashing it (client.downlink), then rebuilds.
        if digest(base) != got.base:
            raise AssertionError("the node's reference does not match the blob's base")
        model = apply_change(base, body, got.bits, fraction or 1.0)
        if digest(model) != got.target:
            raise AssertionError("the rebuilt model does not match its digest")

    payload, target_digest = per_round()
    return median_seconds(per_round, repeats) / clients + median_seconds(
        lambda: per_node(payload, target_digest), repeats
    )


def _mb_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def micro_table(rows: Sequence[MicroRow]) -> Table:
    """Return the table of codec MB/s and seal+open / HPKE / raw AES-256-GCM MB/s per payload."""
    table = Table(title="microbenchmarks (MB/s = 10^6 bytes/s, medians)")
    for name in (
        "setting",
        "coords",
        "payload B",
        "encode",
        "decode",
        "seal+open",
        "HPKE only",
        "AES-256-GCM",
    ):
        table.add_column(name, justify="left" if name == "setting" else "right")
    size = rows[0].size if rows else 0
    for row in rows:
        if row.size != size:
            table.add_section()
            size = row.size
        table.add_row(
            row.label,
            f"{row.size:,}",
            f"{row.payload_bytes:,}",
            _mb_s(row.encode_mb_s),
            _mb_s(row.decode_mb_s),
            _mb_s(row.seal_open_mb_s),
            _mb_s(row.hpke_mb_s),
            _mb_s(row.aes_gcm_mb_s),
        )
    return table

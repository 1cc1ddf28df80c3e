"""Shared pieces of the sealing tests: a context, a codec header, RFC 9180 vectors, secrets."""

from __future__ import annotations

import base64
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from hypothesis import strategies as st

from common.crypto.aggregator_keys import AggregatorKeyPair
from common.sealed_header import CodecHeader, SealContext
from common.sealing import seal_update

VECTORS_PATH = Path(__file__).parent / "data" / "rfc9180_x25519_sha256_aes256gcm.json"

CTX = SealContext(run_id=11, server_round=4, node_id=1001)
CODEC = CodecHeader(topk=0.25, bits=8, size=4096)


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


def assert_no_secret(text: str, keypair: AggregatorKeyPair) -> None:
    for spelling in _secret_spellings(keypair):
        assert spelling not in text


def _vectors() -> list[dict[str, Any]]:
    doc = json.loads(VECTORS_PATH.read_text())
    return [
        v
        for v in doc["vectors"]
        if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == (0, 0x20, 0x01, 0x02)
    ]


VECTORS = _vectors()
h = bytes.fromhex


TOPKS = st.one_of(
    st.sampled_from([1.0, 0.1, 0.5, 5e-324, math.nextafter(1.0, 0.0), 1e-300]),
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_subnormal=True),
)


@dataclass(frozen=True)
class FuzzWorld:
    keypair: AggregatorKeyPair
    originals: tuple[tuple[bytes, bytes], ...]  # (sealed, payload)


@functools.cache
def fuzz_world() -> FuzzWorld:
    keypair = AggregatorKeyPair.generate()
    originals = []
    for size in (0, 1, 48):
        payload = os.urandom(size)
        blob = seal_update(payload, public_key=keypair.public_bytes, context=CTX, codec=CODEC)
        originals.append((blob, payload))
    return FuzzWorld(keypair=keypair, originals=tuple(originals))

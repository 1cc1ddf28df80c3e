"""The sealed update a client sends: DP facts and the encoded delta, sealed to the aggregator.

Plaintext inside the HPKE ciphertext (big-endian)::

    noise_multiplier  float64   σ of this round's DP-SGD
    sample_rate       float64   Poisson sampling rate q
    steps             u32       DP-SGD steps taken this round
    epsilon           float64   ε the client computed after this round
    codec payload     bytes     ``common.codec`` body of the flattened ``local - global`` delta

The DP facts travel inside the seal so the relay can neither read nor alter what the server's
ledger charges. ``seal_client_update`` and ``open_client_update`` are the two ends.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.codec import CodecError, CodecParams, decode_update, kept_count
from common.sealing import (
    AggregatorKeyPair,
    CodecHeader,
    SealContext,
    SealError,
    open_update,
    seal_update,
)

_FACTS = struct.Struct(">ddId")


@dataclass(frozen=True)
class DPFacts:
    """One round's DP-SGD parameters and the ε the client reports after it."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float


class UpdateRejected(Exception):  # noqa: N818 (a verdict with a reason category)
    """An update that must not reach aggregation; ``reason`` names the failed check."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def max_payload(size: int, params: CodecParams) -> int:
    """Upper bound on the plaintext length of an honest update of ``size`` coordinates."""
    k = kept_count(size, params.topk)
    index = min((size + 7) // 8, 5 * k)
    values = (k * params.bits + 7) // 8
    scales = 4 * ((k + 4095) // 4096)
    return _FACTS.size + 64 + index + values + scales


def seal_client_update(
    payload: bytes,
    *,
    facts: DPFacts,
    params: CodecParams,
    size: int,
    public_key: bytes,
    context: SealContext,
) -> bytes:
    """Seal an encoded delta and its DP facts to the aggregator for ``context``."""
    plaintext = (
        _FACTS.pack(facts.noise_multiplier, facts.sample_rate, facts.steps, facts.epsilon) + payload
    )
    return seal_update(
        plaintext,
        public_key=public_key,
        context=context,
        codec=CodecHeader(topk=params.topk, bits=params.bits, size=size),
    )


def open_client_update(
    sealed: bytes,
    *,
    keypair: AggregatorKeyPair,
    expected: SealContext,
    params: CodecParams,
    size: int,
) -> tuple[DPFacts, npt.NDArray[np.float32]]:
    """Open, decode and validate one sealed update; return its DP facts and dense delta.

    Raises ``UpdateRejected`` with the category of the first failed check: the sealing
    reasons (``malformed``, ``version``, ``oversize``, ``replay``, ``misroute``, ``tamper``),
    or ``malformed`` for a payload that does not decode to ``size`` finite values.
    """
    try:
        header, plaintext = open_update(
            sealed, keypair=keypair, expected=expected, max_payload=max_payload(size, params)
        )
    except SealError as exc:
        raise UpdateRejected(exc.reason, exc.detail) from None
    codec = header.codec
    if (codec.topk, codec.bits, codec.size) != (params.topk, params.bits, size):
        raise UpdateRejected(
            "malformed",
            f"codec topk={codec.topk} bits={codec.bits} size={codec.size}, "
            f"expected topk={params.topk} bits={params.bits} size={size}",
        )
    if len(plaintext) < _FACTS.size:
        raise UpdateRejected("malformed", "plaintext shorter than the DP facts")
    sigma, rate, steps, epsilon = _FACTS.unpack_from(plaintext)
    if not (
        math.isfinite(sigma)
        and sigma > 0
        and 0 < rate <= 1
        and steps >= 1
        and math.isfinite(epsilon)
        and epsilon >= 0
    ):
        raise UpdateRejected("malformed", "DP facts out of range")
    try:
        delta = decode_update(plaintext[_FACTS.size :], size=size, params=params)
    except CodecError as exc:
        raise UpdateRejected("malformed", f"payload does not decode ({exc})") from None
    if not np.isfinite(delta).all():
        raise UpdateRejected("malformed", "update has non-finite values")
    return DPFacts(sigma, rate, steps, epsilon), delta

"""The sealed update's cleartext header: its layout, the context it binds, and its checks.

A sealed update is ``header || enc || ciphertext``: a ``HEADER_LEN``-byte header (magic, format
version, HPKE suite ids, codec parameters, run id, round, sender node id, payload length; all
integers big-endian), the HPKE encapsulated key and the AEAD ciphertext. The layout, byte by
byte, is in docs/sealing.md. The header is cleartext so the receiver can route and size-check
before any cryptography; it is authenticated only once opened (``common.sealing``), as the
AEAD's associated data and through the context bound into the HPKE ``info``. Every refusal is a
:class:`SealError` whose ``reason`` is one of ``REASONS`` and whose message is one line.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final

from common.crypto.hpke import (
    ENC_LEN,
    MAX_PLAINTEXT_LEN,
    SUITE_AEAD_ID,
    SUITE_KDF_ID,
    SUITE_KEM_ID,
    TAG_LEN,
)

REASONS: Final[tuple[str, ...]] = (
    "malformed",
    "version",
    "oversize",
    "replay",
    "misroute",
    "tamper",
)

INFO_LABEL: Final = b"fedveil/update/v1"
MAGIC: Final = b"FVSU"
FORMAT_VERSION: Final = 1

_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1

# magic, version, kem_id, kdf_id, aead_id, topk, bits, size, run_id, round, node_id, payload_len
_HEADER: Final = struct.Struct(">4sBHHHdBIQIQI")
_CONTEXT: Final = struct.Struct(">QIQ")
HEADER_LEN: Final = _HEADER.size
MAX_PAYLOAD_LEN: Final = MAX_PLAINTEXT_LEN


class SealError(Exception):
    """A sealed update was refused.

    ``reason`` is one of ``REASONS``; ``str(e)`` is one line and never contains key material.
    """

    reason: str

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown SealError reason {reason!r}; expected one of {REASONS}")
        detail = " ".join(detail.split())
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        suffix = f": {self.detail}" if self.detail else ""
        return f"sealed update refused ({self.reason}){suffix}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SealContext:
    """Who sealed an update for which round; bound into the HPKE ``info`` and the header.

    Attributes:
        run_id: Flower run id (u64).
        server_round: Server round, ``>= 1`` (u32).
        node_id: The sender's Flower node id (u64).

    """

    run_id: int
    server_round: int
    node_id: int

    def __post_init__(self) -> None:
        if not _is_int(self.run_id) or not 0 <= self.run_id <= _U64_MAX:
            raise ValueError(f"`run_id` must be an integer in [0, 2**64 - 1], got {self.run_id!r}")
        if not _is_int(self.server_round) or not 1 <= self.server_round <= _U32_MAX:
            raise ValueError(
                f"`server_round` must be an integer in [1, 2**32 - 1], got {self.server_round!r}"
            )
        if not _is_int(self.node_id) or not 0 <= self.node_id <= _U64_MAX:
            raise ValueError(
                f"`node_id` must be an integer in [0, 2**64 - 1], got {self.node_id!r}"
            )

    def info(self) -> bytes:
        """Return the HPKE ``info``: ``INFO_LABEL`` then u64 run_id, u32 round, u64 node_id."""
        return INFO_LABEL + _CONTEXT.pack(self.run_id, self.server_round, self.node_id)


@dataclass(frozen=True)
class CodecHeader:
    """Codec parameters carried, authenticated, in the header.

    Attributes:
        topk: Fraction of coordinates kept, in ``(0, 1]``; sent as float64, so it round-trips
            exactly.
        bits: Bits per kept value, ``1``-``32``.
        size: Number of float32 coordinates of the dense update (u32).

    """

    topk: float
    bits: int
    size: int

    def __post_init__(self) -> None:
        topk_ok = isinstance(self.topk, int | float) and not isinstance(self.topk, bool)
        if not topk_ok or not (math.isfinite(self.topk) and 0 < self.topk <= 1):
            raise ValueError(f"`topk` must be a fraction in (0, 1], got {self.topk!r}")
        if not _is_int(self.bits) or not 1 <= self.bits <= 32:
            raise ValueError(f"`bits` must be an integer in [1, 32], got {self.bits!r}")
        if not _is_int(self.size) or not 0 <= self.size <= _U32_MAX:
            raise ValueError(f"`size` must be an integer in [0, 2**32 - 1], got {self.size!r}")


@dataclass(frozen=True)
class SealedHeader:
    """The parsed cleartext header of a sealed update (authenticated only once opened)."""

    version: int
    kem_id: int
    kdf_id: int
    aead_id: int
    codec: CodecHeader
    context: SealContext
    payload_len: int


def encode_header(codec: CodecHeader, context: SealContext, payload_len: int) -> bytes:
    """Return the ``HEADER_LEN``-byte header of an update of ``payload_len`` bytes."""
    return _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        SUITE_KEM_ID,
        SUITE_KDF_ID,
        SUITE_AEAD_ID,
        float(codec.topk),
        codec.bits,
        codec.size,
        context.run_id,
        context.server_round,
        context.node_id,
        payload_len,
    )


def as_bytes_view(sealed: object) -> memoryview:
    """Return ``sealed`` as a flat byte view, or raise ``SealError("malformed")``."""
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise SealError("malformed", f"expected bytes, got {type(sealed).__name__}")
    view = memoryview(sealed)
    if view.ndim != 1 or view.itemsize != 1:
        try:
            view = view.cast("B")
        except (TypeError, ValueError):
            raise SealError("malformed", "expected a contiguous byte buffer") from None
    return view


def parse_header(view: memoryview, max_payload: int) -> SealedHeader:
    """Parse and check the header of the byte view ``view`` (see :func:`read_header`)."""
    if not _is_int(max_payload) or max_payload < 0:
        raise ValueError(f"`max_payload` must be a non-negative integer, got {max_payload!r}")
    n = view.nbytes
    if n < len(MAGIC) + 1 or view[: len(MAGIC)].tobytes() != MAGIC:
        raise SealError("malformed", "not a fedveil sealed update (bad magic or too short)")
    version = view[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise SealError("version", f"format version {version}, this build reads {FORMAT_VERSION}")
    if n < HEADER_LEN:
        raise SealError("malformed", f"{n} bytes, shorter than the {HEADER_LEN}-byte header")
    (
        _magic,
        _version,
        kem_id,
        kdf_id,
        aead_id,
        topk,
        bits,
        size,
        run_id,
        server_round,
        node_id,
        payload_len,
    ) = _HEADER.unpack_from(view)
    if (kem_id, kdf_id, aead_id) != (SUITE_KEM_ID, SUITE_KDF_ID, SUITE_AEAD_ID):
        raise SealError(
            "version",
            f"HPKE suite kem={kem_id:#06x} kdf={kdf_id:#06x} aead={aead_id:#06x} "
            f"is not {SUITE_KEM_ID:#06x}/{SUITE_KDF_ID:#06x}/{SUITE_AEAD_ID:#06x}",
        )
    try:
        codec = CodecHeader(topk=topk, bits=bits, size=size)
        context = SealContext(run_id=run_id, server_round=server_round, node_id=node_id)
    except ValueError as err:
        raise SealError("malformed", f"invalid header field: {err}") from None
    if payload_len > max_payload:
        raise SealError(
            "oversize", f"payload of {payload_len} bytes exceeds the limit of {max_payload}"
        )
    expected_len = HEADER_LEN + ENC_LEN + payload_len + TAG_LEN
    if n != expected_len:
        raise SealError(
            "malformed", f"{n} bytes, the header announces {expected_len} ({payload_len} payload)"
        )
    # The fields in the order the header carries them.
    return SealedHeader(version, kem_id, kdf_id, aead_id, codec, context, payload_len)


def read_header(sealed: bytes, *, max_payload: int) -> SealedHeader:
    """Parse and check the cleartext header of a sealed update; no cryptography, no copies.

    The header is not yet authenticated: only ``open_update`` proves it.

    Raises:
        SealError: ``malformed`` (short, garbled, wrong magic, invalid field, length differs from
            the announced one), ``version`` (unknown format version or HPKE suite), or
            ``oversize`` (``payload_len > max_payload``).
        ValueError: ``max_payload`` is not a non-negative integer.

    """
    return parse_header(as_bytes_view(sealed), max_payload)

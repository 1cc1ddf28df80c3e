"""End-to-end sealing of model updates to the aggregator: HPKE base mode, RFC 9180.

The only module of fedveil that touches low-level cryptography. A client seals its (already
compressed) update to the aggregator's X25519 public key; the Flower SuperLink relays the bytes
but can neither read nor alter them. The suite is fixed: DHKEM(X25519, HKDF-SHA256) (``0x0020``),
HKDF-SHA256 (``0x0001``), AES-256-GCM (``0x0002``), via ``pyhpke``; one single-shot seal per
update.

Wire format, all integers big-endian (``HEADER_LEN`` = 48, then ``ENC_LEN`` = 32)::

    offset  size  field
         0     4  magic          b"FVSU"
         4     1  version        u8, FORMAT_VERSION = 1
         5     2  kem_id         u16, 0x0020
         7     2  kdf_id         u16, 0x0001
         9     2  aead_id        u16, 0x0002
        11     8  topk           IEEE-754 float64, in (0, 1]
        19     1  bits           u8, 1..32
        20     4  size           u32, float32 coordinates of the dense update
        24     8  run_id         u64
        32     4  server_round   u32, >= 1
        36     8  node_id        u64, the sender's Flower node id
        44     4  payload_len    u32, plaintext bytes
        48    32  enc            the HPKE encapsulated key
        80     -  ciphertext     payload_len + 16 bytes (AES-256-GCM, tag last)

The header is cleartext so the aggregator can route and size-check before any cryptography, and
it is authenticated twice: it is the AEAD's associated data, and the context it names
(run, round, node) is bound into the HPKE ``info`` (``SealContext.info``). ``open_update``
compares the claimed context with the one it expects *before* opening, so an unchanged old
ciphertext is refused as ``replay``, one sealed for another node as ``misroute``, and any altered
byte as ``tamper`` (or ``malformed``/``version``/``oversize`` when the header no longer parses).
Rewriting the header to claim the expected context fails the AEAD: ``tamper``.

Errors: every refusal of sealed bytes is a ``SealError`` whose ``reason`` is one of ``REASONS``;
its message is one line and never contains key material. Key files: ``aggregator.key`` (PEM
PKCS8, mode 0600, never overwritten) and ``aggregator.pub`` (PEM SubjectPublicKeyInfo, 0644).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

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

REASONS: Final[tuple[str, ...]] = (
    "malformed",
    "version",
    "oversize",
    "replay",
    "misroute",
    "tamper",
)

SUITE_KEM_ID: Final = 0x0020
SUITE_KDF_ID: Final = 0x0001
SUITE_AEAD_ID: Final = 0x0002
INFO_LABEL: Final = b"fedveil/update/v1"
MAGIC: Final = b"FVSU"
FORMAT_VERSION: Final = 1

PRIVATE_KEY_FILE: Final = "aggregator.key"
PUBLIC_KEY_FILE: Final = "aggregator.pub"

_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1

# magic, version, kem_id, kdf_id, aead_id, topk, bits, size, run_id, round, node_id, payload_len
_HEADER: Final = struct.Struct(">4sBHHHdBIQIQI")
_CONTEXT: Final = struct.Struct(">QIQ")
HEADER_LEN: Final = _HEADER.size  # 48
ENC_LEN: Final = 32
TAG_LEN: Final = 16
_X25519_LEN: Final = 32
# AES-GCM as implemented by `cryptography` takes at most 2**31 - 1 bytes in one call.
MAX_PAYLOAD_LEN: Final = 2**31 - 1
_MAX_KEY_FILE_BYTES: Final = 64 * 1024

_SUITE: Final = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM
)


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


class KeyFileExistsError(FileExistsError, ValueError):
    """``write_keypair`` refused to overwrite an existing aggregator private key."""


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


class AggregatorKeyPair:
    """The aggregator's X25519 key pair; its ``repr`` shows only the public fingerprint."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        if not isinstance(private_key, X25519PrivateKey):
            raise TypeError("AggregatorKeyPair needs a cryptography X25519PrivateKey")
        self._private = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> AggregatorKeyPair:
        """Return a fresh key pair from the operating system's CSPRNG."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AggregatorKeyPair:
        """Return the key pair of a raw 32-byte X25519 private key (``ValueError`` otherwise)."""
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise ValueError("an X25519 private key must be given as 32 raw bytes")
        raw = bytes(raw)
        if len(raw) != _X25519_LEN:
            raise ValueError(f"an X25519 private key is 32 raw bytes, got {len(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte X25519 public key, what clients seal to."""
        return self._public

    def fingerprint(self) -> str:
        """Return ``fingerprint(self.public_bytes)``."""
        return fingerprint(self._public)

    def private_bytes(self) -> bytes:
        """Return the raw 32-byte private key; for writing to disk only."""
        return self._private.private_bytes_raw()

    def __repr__(self) -> str:
        return f"AggregatorKeyPair(public={self.fingerprint()})"

    __str__ = __repr__


def fingerprint(public_key: bytes) -> str:
    """Return ``"sha256:"`` + hex SHA-256 of a raw 32-byte X25519 public key."""
    if not isinstance(public_key, bytes | bytearray | memoryview):
        raise ValueError("a public key must be given as 32 raw X25519 bytes")
    raw = bytes(public_key)
    if len(raw) != _X25519_LEN:
        raise ValueError(f"a public key is 32 raw X25519 bytes, got {len(raw)}")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------- key files


def _show(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never overwriting) with ``mode`` regardless of umask, and fill it."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def write_keypair(directory: Path, keypair: AggregatorKeyPair) -> tuple[Path, Path]:
    """Write ``aggregator.key`` (PEM PKCS8, 0600) and ``aggregator.pub`` (PEM SPKI, 0644).

    The private key file is created with ``O_CREAT | O_EXCL`` and mode 0600, so it is never
    readable by others, not even briefly, and an existing key is never replaced. The public file
    is written to a temporary name and renamed into place.

    Returns:
        The paths of the private and the public key file.

    Raises:
        KeyFileExistsError: ``aggregator.key`` exists already (a ``ValueError`` and a
            ``FileExistsError``).
        OSError: The directory cannot be created or written.

    """
    if not isinstance(keypair, AggregatorKeyPair):
        raise TypeError("write_keypair needs an AggregatorKeyPair")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / PRIVATE_KEY_FILE
    pub_path = directory / PUBLIC_KEY_FILE
    private_pem = keypair._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = keypair._private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_new(key_path, private_pem, 0o600)
    except FileExistsError as err:
        raise KeyFileExistsError(
            f"{_show(key_path)}: an aggregator private key exists already; "
            "refusing to overwrite it (move it away to make a new one)"
        ) from err
    tmp_path = directory / f".{PUBLIC_KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        _write_new(tmp_path, public_pem, 0o644)
        os.replace(tmp_path, pub_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        with contextlib.suppress(OSError):
            key_path.unlink()
        raise
    _fsync_dir(directory)
    return key_path, pub_path


def _read_key_file(path: Path, what: str, *, private: bool) -> bytes:
    """Read a small regular file; for a private key, refuse group/world permissions."""
    shown = _show(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ValueError(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{shown}: the {what} is not a regular file")
        if private and info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ValueError(
                f"{shown}: the {what} is readable by group or others (mode {mode:04o}); "
                f"refusing to use it, run `chmod 600 {shown}`"
            )
        if info.st_size > _MAX_KEY_FILE_BYTES:
            raise ValueError(f"{shown}: too large ({info.st_size} bytes) to be the {what}")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, _MAX_KEY_FILE_BYTES + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_KEY_FILE_BYTES:
                raise ValueError(f"{shown}: too large to be the {what}")
        return b"".join(chunks)
    except OSError as err:
        raise ValueError(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def load_private_key(path: Path) -> AggregatorKeyPair:
    """Load the aggregator key pair from a PEM PKCS8 X25519 private key file.

    Raises:
        ValueError: One line naming the file: missing or unreadable, readable by group or others
            (with the ``chmod 600`` that fixes it), not PEM, or not an X25519 private key.

    """
    path = Path(path)
    data = _read_key_file(path, "aggregator private key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except Exception:  # any parse failure: the message must not echo the file's content
        key = None
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(
            f"{_show(path)}: not an unencrypted PEM (PKCS8) X25519 private key; "
            "make one with write_keypair"
        )
    return AggregatorKeyPair(key)


def load_public_key(path: Path) -> bytes:
    """Return the raw 32-byte X25519 public key of a PEM SubjectPublicKeyInfo file.

    Raises:
        ValueError: One line naming the file: missing or unreadable, not PEM, or not an X25519
            public key.

    """
    path = Path(path)
    data = _read_key_file(path, "aggregator public key", private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # any parse failure: the message must not echo the file's content
        key = None
    if not isinstance(key, X25519PublicKey):
        raise ValueError(f"{_show(path)}: not a PEM (SubjectPublicKeyInfo) X25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------------- seal / open


def _encode_header(codec: CodecHeader, context: SealContext, payload_len: int) -> bytes:
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


def seal_update(
    payload: bytes, *, public_key: bytes, context: SealContext, codec: CodecHeader
) -> bytes:
    """Seal ``payload`` to the aggregator's raw X25519 ``public_key``.

    Returns ``header || enc || ciphertext`` (see the module docstring), with the HPKE ``info``
    set to ``context.info()`` and the whole header as the AEAD's associated data. Each call uses
    a fresh ephemeral key.

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
    raw_public = bytes(public_key)
    if len(raw_public) != _X25519_LEN:
        raise ValueError(f"a public key is 32 raw X25519 bytes, got {len(raw_public)}")
    header = _encode_header(codec, context, payload_view.nbytes)
    try:
        recipient = KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(raw_public))
        enc, sender = _SUITE.create_sender_context(recipient, info=context.info())
    except ValueError:
        raise ValueError("the public key is not a usable X25519 public key") from None
    plaintext = payload if isinstance(payload, bytes) else payload_view.tobytes()
    ciphertext = sender.seal(plaintext, aad=header)
    return b"".join((header, enc, ciphertext))


def _as_bytes_view(sealed: object) -> memoryview:
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise SealError("malformed", f"expected bytes, got {type(sealed).__name__}")
    view = memoryview(sealed)
    if view.ndim != 1 or view.itemsize != 1:
        try:
            view = view.cast("B")
        except (TypeError, ValueError):
            raise SealError("malformed", "expected a contiguous byte buffer") from None
    return view


def _parse_header(view: memoryview, max_payload: int) -> SealedHeader:
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
    return SealedHeader(
        version=version,
        kem_id=kem_id,
        kdf_id=kdf_id,
        aead_id=aead_id,
        codec=codec,
        context=context,
        payload_len=payload_len,
    )


def read_header(sealed: bytes, *, max_payload: int) -> SealedHeader:
    """Parse and check the cleartext header of a sealed update; no cryptography, no copies.

    The header is not yet authenticated: only ``open_update`` proves it.

    Raises:
        SealError: ``malformed`` (short, garbled, wrong magic, invalid field, length differs from
            the announced one), ``version`` (unknown format version or HPKE suite), or
            ``oversize`` (``payload_len > max_payload``).
        ValueError: ``max_payload`` is not a non-negative integer.

    """
    return _parse_header(_as_bytes_view(sealed), max_payload)


def open_update(
    sealed: bytes, *, keypair: AggregatorKeyPair, expected: SealContext, max_payload: int
) -> tuple[SealedHeader, bytes]:
    """Check and open a sealed update for the ``expected`` run, round and sender.

    Sizes are checked before anything is allocated; the claimed context is compared with
    ``expected`` before any cryptography; then HPKE opens with ``expected.info()`` and the header
    as associated data.

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
    view = _as_bytes_view(sealed)
    header = _parse_header(view, max_payload)
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
        recipient = KEMKey.from_pyca_cryptography_key(keypair._private)
        enc = bytes(view[HEADER_LEN : HEADER_LEN + ENC_LEN])
        context = _SUITE.create_recipient_context(enc, recipient, info=expected.info())
        # pyhpke hands both to cryptography's AESGCM, which takes any buffer: no copy of a
        # large ciphertext.
        ciphertext = cast("bytes", view[HEADER_LEN + ENC_LEN :])
        payload = context.open(ciphertext, aad=cast("bytes", view[:HEADER_LEN]))
    except Exception:  # every HPKE failure is the same opaque refusal
        raise SealError(
            "tamper", "decryption failed: altered in transit or sealed to another key"
        ) from None
    if len(payload) != header.payload_len:  # cannot happen with a sound AEAD; never trust it
        raise SealError("tamper", "decrypted length differs from the header")
    return header, payload

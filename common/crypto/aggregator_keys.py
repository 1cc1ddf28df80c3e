"""The aggregator's X25519 key pair and its two files.

``aggregator.key``: the private key, PEM PKCS8, mode 0600 from its first byte, never written
over an existing file. ``aggregator.pub``: the public key, PEM SubjectPublicKeyInfo, mode 0644,
replaced atomically. Clients pin the public key by :func:`fingerprint` (``sha256:`` + hex).
Loading refuses a private key file that group or others can read. Every refusal is one line
naming the file, and no message or ``repr`` ever holds key material.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.files import (
    SECRET_MODE,
    fsync_dir,
    read_key_file,
    show_path,
    write_new,
)

PRIVATE_KEY_FILE: Final = "aggregator.key"
PUBLIC_KEY_FILE: Final = "aggregator.pub"
X25519_LEN: Final = 32
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


class KeyFileExistsError(FileExistsError, ValueError):
    """``write_keypair`` refused to overwrite an existing aggregator private key."""


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
        if len(raw) != X25519_LEN:
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
    if len(raw) != X25519_LEN:
        raise ValueError(f"a public key is 32 raw X25519 bytes, got {len(raw)}")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def write_keypair(directory: Path, keypair: AggregatorKeyPair) -> tuple[Path, Path]:
    """Write ``aggregator.key`` (PEM PKCS8, 0600) and ``aggregator.pub`` (PEM SPKI, 0644).

    The private key file is never readable by others, not even briefly, and neither file ever
    replaces an existing one (``common.files.write_new``): nodes may pin the old public key. If
    the public file cannot be written, the new private key is removed again.

    Returns:
        The paths of the private and the public key file.

    Raises:
        KeyFileExistsError: ``aggregator.key`` or ``aggregator.pub`` exists already (a
            ``ValueError`` and a ``FileExistsError``).
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
        write_new(key_path, private_pem, mode=SECRET_MODE)
    except FileExistsError as err:
        raise KeyFileExistsError(
            f"{show_path(key_path)}: an aggregator private key exists already; "
            "refusing to overwrite it (move it away to make a new one)"
        ) from err
    try:
        write_new(pub_path, public_pem, mode=0o644)
    except BaseException as err:
        key_path.unlink(missing_ok=True)
        if isinstance(err, FileExistsError):
            raise KeyFileExistsError(
                f"{show_path(pub_path)}: an aggregator public key exists already; "
                "refusing to overwrite it (move it away to make a new one)"
            ) from err
        raise
    fsync_dir(directory)
    return key_path, pub_path


def load_private_key(path: Path) -> AggregatorKeyPair:
    """Load the aggregator key pair from a PEM PKCS8 X25519 private key file.

    Raises:
        ValueError: One line naming the file: missing or unreadable, readable by group or others
            (with the ``chmod 600`` that fixes it), not PEM, or not an X25519 private key.

    """
    path = Path(path)
    data = read_key_file(path, "aggregator private key", max_bytes=_MAX_KEY_FILE_BYTES, secret=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except Exception:  # any parse failure: the message must not echo the file's content
        key = None
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(
            f"{show_path(path)}: not an unencrypted PEM (PKCS8) X25519 private key; "
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
    data = read_key_file(path, "aggregator public key", max_bytes=_MAX_KEY_FILE_BYTES, secret=False)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # any parse failure: the message must not echo the file's content
        key = None
    if not isinstance(key, X25519PublicKey):
        raise ValueError(f"{show_path(path)}: not a PEM (SubjectPublicKeyInfo) X25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

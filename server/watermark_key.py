"""The watermark's secret: a 32-byte key and its key file (``watermark.key``, mode 0600).

The file is one ASCII line, ``fedveil-watermark-key-v1 <64 hex digits>``, created mode 0600 from
its first byte and never over an existing file (``common.files.write_new``). Reading refuses a
file that group or others can read. Anyone holding the key can regenerate the trigger set and
so prove, or wash out, the watermark: it never leaves the server's run directory.
Every refusal is a :class:`WatermarkError` whose message is one line naming the file.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Final

from common.files import SECRET_MODE, read_key_file, show_path, write_new

KEY_FILE: Final = "watermark.key"
KEY_BYTES: Final = 32

_KEY_HEADER: Final = "fedveil-watermark-key-v1"
_KEY_FILE_BYTES: Final = len(_KEY_HEADER) + 1 + 2 * KEY_BYTES + 1


class WatermarkError(ValueError):
    """A key file, model file or trigger request that cannot be used; one line names it."""


def check_key(key: object) -> bytes:
    """Return ``key`` if it is 32 bytes, else raise :class:`WatermarkError`."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise WatermarkError(f"a watermark key is {KEY_BYTES} bytes")
    return key


def generate_key() -> bytes:
    """Return a fresh 32-byte secret from the OS's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def write_key(path: Path, key: bytes) -> None:
    """Write ``key`` to ``path`` with mode 0600, atomically, never replacing an existing file.

    Readers see no file or the whole key (``common.files.write_new``).

    Raises:
        WatermarkError: ``key`` is not 32 bytes, or ``path`` exists already.
        OSError: The directory cannot be written.

    """
    check_key(key)
    path = Path(path)
    data = f"{_KEY_HEADER} {key.hex()}\n".encode("ascii")
    try:
        write_new(path, data, mode=SECRET_MODE)
    except FileExistsError:
        raise WatermarkError(
            f"{path}: a watermark key exists already; refusing to overwrite it"
        ) from None


def new_key(path: Path) -> bytes:
    """Make a fresh key, write it to ``path`` (:func:`write_key`), and return it."""
    key = generate_key()
    write_key(path, key)
    return key


def read_key(path: Path) -> bytes:
    """Read a key written by :func:`write_key`.

    Raises:
        WatermarkError: One line naming the file: unreadable, not a regular file, readable by
            group or others, or not a fedveil watermark key.

    """
    try:
        data = read_key_file(Path(path), "watermark key", max_bytes=_KEY_FILE_BYTES, secret=True)
    except ValueError as exc:
        raise WatermarkError(str(exc)) from None
    try:
        header, hex_key = data.decode("ascii").split()
        key = bytes.fromhex(hex_key)
    except (UnicodeDecodeError, ValueError):
        header, key = "", b""
    if header != _KEY_HEADER or len(key) != KEY_BYTES:
        raise WatermarkError(f"{show_path(path)}: not a fedveil watermark key file")
    return key

"""Atomic and secret file writes: readers see the old file or the whole new one, never half.

Two writes, used by every writer of run-directory files, checkpoints, node state and keys:

* :func:`write_atomic` replaces a file through a temporary file and a rename.
* :func:`write_new` creates a file that must not exist yet, with its mode set from the first
  byte (``0o600`` for secrets: never readable by others, not even briefly), through a temporary
  file and a hard link, which fails if the target exists: an existing key is never replaced.

:func:`read_key_file` is their reading side for small key files: a regular file, bounded in
size, and for a secret never readable by group or others; every refusal is one line.

Caveat: ``durable=False`` skips ``fsync``; after a machine crash (not a process crash) such a
file may be the old one or empty. Only state that is cheap to lose may use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

SECRET_MODE = 0o600
"""Mode of every file that holds key material."""


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (best effort: some file systems refuse it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically.

    Args:
        path: The file to write; its folder is created if missing.
        data: The new content.
        mode: The file's permission bits.
        durable: ``fsync`` the data before the rename (see the module's caveat).

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)  # the rename itself survives a power loss only once flushed


def write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` holding ``data`` with ``mode`` from the first byte; never replace a file.

    Args:
        path: The file to create; its folder is created if missing.
        data: The content, written whole and fsynced before the file appears.
        mode: Permission bits regardless of the umask (``SECRET_MODE`` for keys).

    Raises:
        FileExistsError: ``path`` exists already (it is left as it was).
        OSError: The folder cannot be written.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # atomic, and fails if `path` exists
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)


def show_path(path: Path) -> str:
    """``path`` as text for a one-line message (quoted if it holds unprintable characters)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def read_key_file(path: Path, what: str, *, max_bytes: int, secret: bool) -> bytes:
    """Return the bytes of the small key file ``path``, called ``what`` in messages.

    Raises:
        ValueError: One line naming the file: unreadable, not a regular file, larger than
            ``max_bytes``, or (``secret``) readable by group or others, with the ``chmod 600``
            that fixes it.

    """
    shown = show_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ValueError(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{shown}: the {what} is not a regular file")
        if secret and info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ValueError(
                f"{shown}: the {what} is readable by group or others (mode {mode:04o}); "
                f"refusing to use it, run `chmod 600 {shown}`"
            )
        if info.st_size > max_bytes:
            raise ValueError(f"{shown}: too large ({info.st_size} bytes) to be the {what}")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, max_bytes + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"{shown}: too large to be the {what}")
        return b"".join(chunks)
    except OSError as err:
        raise ValueError(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    finally:
        os.close(fd)

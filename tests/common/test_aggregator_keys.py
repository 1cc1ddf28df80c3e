"""Tests of ``common.crypto.aggregator_keys``: fingerprints, key files, refusals, no secrets."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x448 import X448PrivateKey

from common.crypto import aggregator_keys as keys
from common.crypto.aggregator_keys import AggregatorKeyPair
from common.sealing import open_update, seal_update
from tests.common.sealing_support import CODEC, CTX, VECTORS, assert_no_secret, h


@pytest.fixture(scope="module")
def keypair() -> AggregatorKeyPair:
    return AggregatorKeyPair.generate()


def test_fingerprint_format_and_stability(keypair: AggregatorKeyPair, tmp_path: Path) -> None:
    # Pinned: SHA-256 of the RFC 9180 vector's pkRm.
    pk_rm = h(VECTORS[0]["pkRm"])
    assert keys.fingerprint(pk_rm) == (
        "sha256:69df8d73e7407153d44babaf63e78f7a37ea1cb4f043588b75b51b02f8f9ddc3"
    )
    assert keys.fingerprint(pk_rm) == "sha256:" + hashlib.sha256(pk_rm).hexdigest()
    fp = keypair.fingerprint()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert fp == keys.fingerprint(keypair.public_bytes) == keypair.fingerprint()
    key_path, pub_path = keys.write_keypair(tmp_path, keypair)
    assert keys.load_private_key(key_path).fingerprint() == fp
    assert keys.fingerprint(keys.load_public_key(pub_path)) == fp
    assert AggregatorKeyPair.generate().fingerprint() != fp
    for bad in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(ValueError, match="32"):
            keys.fingerprint(bad)


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Let a test set the process umask; restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_write_keypair_modes_and_formats(
    tmp_path: Path, umask: Callable[[int], int], mask: int
) -> None:
    umask(mask)
    keypair = AggregatorKeyPair.generate()
    key_path, pub_path = keys.write_keypair(tmp_path / "keys" / "nested", keypair)
    assert (key_path.name, pub_path.name) == ("aggregator.key", "aggregator.pub")
    assert _mode(key_path) == 0o600
    assert _mode(pub_path) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")  # SPKI
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["aggregator.key", "aggregator.pub"]


def test_load_round_trip(tmp_path: Path) -> None:
    keypair = AggregatorKeyPair.generate()
    key_path, pub_path = keys.write_keypair(tmp_path, keypair)
    loaded = keys.load_private_key(key_path)
    assert loaded.private_bytes() == keypair.private_bytes()
    assert loaded.public_bytes == keypair.public_bytes
    assert keys.load_public_key(pub_path) == keypair.public_bytes
    # The loaded pair opens what was sealed to the written public key.
    blob = seal_update(b"u", public_key=keys.load_public_key(pub_path), context=CTX, codec=CODEC)
    assert open_update(blob, keypair=loaded, expected=CTX, max_payload=1)[1] == b"u"
    # An owner-read-only key is fine too.
    key_path.chmod(0o400)
    assert keys.load_private_key(key_path).public_bytes == keypair.public_bytes


def test_write_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    first = AggregatorKeyPair.generate()
    key_path, pub_path = keys.write_keypair(tmp_path, first)
    key_before, pub_before = key_path.read_bytes(), pub_path.read_bytes()
    second = AggregatorKeyPair.generate()
    with pytest.raises(ValueError, match="refusing to overwrite") as info:
        keys.write_keypair(tmp_path, second)
    assert isinstance(info.value, FileExistsError)
    assert isinstance(info.value, keys.KeyFileExistsError)
    assert str(key_path) in str(info.value)
    assert "\n" not in str(info.value)
    assert key_path.read_bytes() == key_before
    assert pub_path.read_bytes() == pub_before
    assert keys.load_private_key(key_path).private_bytes() == first.private_bytes()
    assert_no_secret(str(info.value), first)
    assert_no_secret(str(info.value), second)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o610])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    keypair = AggregatorKeyPair.generate()
    key_path, _ = keys.write_keypair(tmp_path, keypair)
    key_path.chmod(mode)
    with pytest.raises(ValueError) as info:
        keys.load_private_key(key_path)
    message = str(info.value)
    assert f"chmod 600 {key_path}" in message
    assert "\n" not in message
    assert_no_secret(message, keypair)


def _wrong_private_files(tmp_path: Path, keypair: AggregatorKeyPair) -> dict[str, Path]:
    key_path, pub_path = keys.write_keypair(tmp_path / "real", keypair)

    def put(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    ed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    x448 = X448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = keypair._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    raw_der = keypair._private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "missing": tmp_path / "nope.key",
        "directory": tmp_path / "real",
        "empty": put("empty.key", b""),
        "garbage": put("garbage.key", b"not a key at all\n"),
        "raw-bytes": put("raw.key", keypair.private_bytes()),
        "der": put("der.key", raw_der),
        "ed25519": put("ed.key", ed),
        "x448": put("x448.key", x448),
        "encrypted": put("enc.key", encrypted),
        "public-key": put("pub-as-private.key", pub_path.read_bytes()),
        "huge": put("huge.key", key_path.read_bytes() * 1000),
    }


def _assert_each_refused_in_one_line(
    load: Callable[[Path], object], cases: dict[str, Path], keypair: AggregatorKeyPair
) -> None:
    """``load`` refuses every file of ``cases`` with a one-line ValueError naming it, no secret."""
    for case, path in cases.items():
        with pytest.raises(ValueError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message, case
        assert "\n" not in message, case
        assert_no_secret(message, keypair)


def test_wrong_private_key_files_are_one_line_value_errors_naming_the_file(tmp_path: Path) -> None:
    keypair = AggregatorKeyPair.generate()
    _assert_each_refused_in_one_line(
        keys.load_private_key, _wrong_private_files(tmp_path, keypair), keypair
    )


def test_wrong_public_key_files_are_one_line_value_errors_naming_the_file(tmp_path: Path) -> None:
    keypair = AggregatorKeyPair.generate()
    key_path, _ = keys.write_keypair(tmp_path / "real", keypair)
    ed_pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cases = {
        "missing": tmp_path / "nope.pub",
        "directory": tmp_path / "real",
        "empty": tmp_path / "empty.pub",
        "garbage": tmp_path / "garbage.pub",
        "raw-bytes": tmp_path / "raw.pub",
        "ed25519": tmp_path / "ed.pub",
        "private-key": key_path,
    }
    cases["empty"].write_bytes(b"")
    cases["garbage"].write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    cases["raw-bytes"].write_bytes(keypair.public_bytes)
    cases["ed25519"].write_bytes(ed_pub)
    _assert_each_refused_in_one_line(keys.load_public_key, cases, keypair)


def test_repr_hides_the_private_key() -> None:
    keypair = AggregatorKeyPair.generate()
    for text in (repr(keypair), str(keypair), f"{keypair}", f"{keypair!r}", repr([keypair])):
        assert_no_secret(text, keypair)
        assert keypair.fingerprint() in text
    assert not hasattr(keypair, "__dict__")


def test_from_private_bytes_checks_the_length() -> None:
    for raw in (b"", b"\x07" * 31, b"\x07" * 33):
        with pytest.raises(ValueError, match="32 raw bytes") as info:
            AggregatorKeyPair.from_private_bytes(raw)
        assert "0707" not in str(info.value)
    raw = os.urandom(32)
    assert AggregatorKeyPair.from_private_bytes(raw).private_bytes() == raw


def test_write_keypair_never_replaces_a_public_key_nodes_may_pin(tmp_path: Path) -> None:
    pinned = tmp_path / "aggregator.pub"
    pinned.write_bytes(b"the key every node pins")
    with pytest.raises(keys.KeyFileExistsError, match="public key exists already"):
        keys.write_keypair(tmp_path, AggregatorKeyPair.generate())
    assert pinned.read_bytes() == b"the key every node pins"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aggregator.pub"]  # no orphan key

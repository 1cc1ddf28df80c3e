"""Tests of ``common.crypto.certificates``: TLS files, validity checks, SuperNode keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.supernode.register import try_load_public_key

from common.crypto.certificates import (
    MAX_DAYS,
    CertificateError,
    TlsFiles,
    check_certificate,
    check_host,
    check_node_private_key,
    check_node_public_key,
    check_tls_files,
    create_node_key,
    create_tls_files,
)

NOW = dt.datetime.now(dt.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _one_line(exc: pytest.ExceptionInfo[CertificateError], *words: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def _node_keys_refused(private: Path, public: Path, private_says: str, public_says: str) -> None:
    """Both node key checks refuse their file in one line saying what is wrong."""
    with pytest.raises(CertificateError) as exc:
        check_node_private_key(private)
    _one_line(exc, private_says)
    with pytest.raises(CertificateError) as exc:
        check_node_public_key(public)
    _one_line(exc, public_says)


@pytest.fixture
def bundle(tmp_path: Path) -> TlsFiles:
    return create_tls_files(tmp_path / "tls")


# ------------------------------------------------------------------------------ TLS files


def test_tls_files_are_written_with_private_keys_0600(bundle: TlsFiles) -> None:
    assert _mode(bundle.ca_key) == 0o600
    assert _mode(bundle.server_key) == 0o600
    assert _mode(bundle.ca_cert) == 0o644
    assert _mode(bundle.server_cert) == 0o644
    names = sorted(p.name for p in bundle.ca_cert.parent.iterdir())
    assert names == ["ca.key", "ca.pem", "server.key", "server.pem"]  # no temporary files left


def test_server_certificate_names_loopback_by_ip_and_dns(bundle: TlsFiles) -> None:
    cert = x509.load_pem_x509_certificate(bundle.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST"])
def test_valid_bundle_passes_for_each_name(bundle: TlsFiles, host: str) -> None:
    check_tls_files(bundle, host=host)


def test_other_hosts_become_ip_and_dns_names(tmp_path: Path) -> None:
    files = create_tls_files(tmp_path, hosts=("10.0.0.5", "fl.example.org", "::1"))

    for host in ("10.0.0.5", "fl.example.org", "::1"):
        check_tls_files(files, host=host)
    with pytest.raises(CertificateError) as exc:
        check_tls_files(files, host="127.0.0.1")
    _one_line(exc, "does not name 127.0.0.1", str(files.server_cert))


def test_existing_files_are_never_overwritten(bundle: TlsFiles) -> None:
    before = {p: p.read_bytes() for p in bundle.ca_cert.parent.iterdir()}

    with pytest.raises(CertificateError) as exc:
        create_tls_files(bundle.ca_cert.parent)

    _one_line(exc, "exists already", "refusing to overwrite")
    assert {p: p.read_bytes() for p in bundle.ca_cert.parent.iterdir()} == before


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    files = create_tls_files(tmp_path, valid_from=NOW - dt.timedelta(days=30), days=10)

    with pytest.raises(CertificateError) as exc:
        check_tls_files(files)

    _one_line(exc, "expired", str(files.ca_cert))


def test_certificate_expires_at_its_end_date(bundle: TlsFiles) -> None:
    check_certificate(bundle.server_cert, ca_path=bundle.ca_cert, now=NOW + dt.timedelta(days=364))
    with pytest.raises(CertificateError) as exc:
        check_certificate(
            bundle.server_cert, ca_path=bundle.ca_cert, now=NOW + dt.timedelta(days=366)
        )
    _one_line(exc, "expired")


def test_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    files = create_tls_files(tmp_path, valid_from=NOW + dt.timedelta(days=2))

    with pytest.raises(CertificateError) as exc:
        check_tls_files(files)

    _one_line(exc, "not valid yet", "check the clock")


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ours = create_tls_files(tmp_path / "ours")
    theirs = create_tls_files(tmp_path / "theirs")

    with pytest.raises(CertificateError) as exc:
        check_certificate(theirs.server_cert, ca_path=ours.ca_cert)

    _one_line(exc, "wrong CA", str(theirs.server_cert), str(ours.ca_cert))


def test_server_certificate_is_no_ca(bundle: TlsFiles) -> None:
    with pytest.raises(CertificateError) as exc:
        check_certificate(bundle.server_cert, ca_path=bundle.server_cert)
    _one_line(exc, "not a CA certificate")


def test_private_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    ours = create_tls_files(tmp_path / "ours")
    theirs = create_tls_files(tmp_path / "theirs")
    mixed = TlsFiles(ours.ca_cert, ours.ca_key, ours.server_cert, theirs.server_key)

    with pytest.raises(CertificateError) as exc:
        check_tls_files(mixed)

    _one_line(exc, "does not belong to", str(theirs.server_key))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, ("cannot read",)),
        (b"", ("not a PEM X.509 certificate",)),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", ("not a PEM",)),
        (os.urandom(300), ("not a PEM",)),
        (b"x" * 300_000, ("too large",)),
    ],
)
def test_unreadable_or_malformed_certificates_are_one_line(
    bundle: TlsFiles, tmp_path: Path, content: bytes | None, words: tuple[str, ...]
) -> None:
    bad = tmp_path / "bad.pem"
    if content is not None:
        bad.write_bytes(content)

    with pytest.raises(CertificateError) as exc:
        check_certificate(bad, ca_path=bundle.ca_cert)

    _one_line(exc, str(bad), *words)


def test_server_key_that_is_no_key_is_refused(bundle: TlsFiles, tmp_path: Path) -> None:
    bad = tmp_path / "server.key"
    bad.write_bytes(bundle.server_cert.read_bytes())
    files = TlsFiles(bundle.ca_cert, bundle.ca_key, bundle.server_cert, bad)

    with pytest.raises(CertificateError) as exc:
        check_tls_files(files)

    _one_line(exc, "not an unencrypted PEM private key")


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="days"):
        create_tls_files(tmp_path / "a", days=0)
    with pytest.raises(ValueError, match="days"):
        create_tls_files(tmp_path / "a", days=10_000_000)
    with pytest.raises(ValueError, match="at least one host"):
        create_tls_files(tmp_path / "b", hosts=())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_longest_validity_is_issued(tmp_path: Path) -> None:
    files = create_tls_files(tmp_path, days=MAX_DAYS)

    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=MAX_DAYS)


@pytest.mark.parametrize(
    "host",
    [
        "bad host",
        "",
        "a..b",
        "-lead.example",
        "trail-.example",
        "under_score.example",
        "x" * 64 + ".example",
        ".".join(["a" * 63] * 4),
        "999.1.1.1",
        "host\nname",
        "exämple.org",
        "*.example.org",
        "[::1]",
    ],
)
def test_a_host_that_is_no_ip_address_or_dns_name_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name") as exc:
        create_tls_files(tmp_path / "tls", hosts=("127.0.0.1", host))

    assert "\n" not in str(exc.value)
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("localhost", x509.DNSName),
        ("superlink-1.example.org", x509.DNSName),
        ("a" * 63 + ".example", x509.DNSName),
        ("10.0.0.7", x509.IPAddress),
        ("::1", x509.IPAddress),
        ("fd00::7", x509.IPAddress),
    ],
)
def test_ip_addresses_and_rfc_1123_names_are_accepted(host: str, kind: type) -> None:
    assert isinstance(check_host(host), kind)


# ------------------------------------------------------------------------------ SuperNode keys


def test_node_key_is_p384_in_openssh_formats_flower_reads(tmp_path: Path) -> None:
    files = create_node_key(tmp_path, comment="edge-7")

    assert _mode(files.private_key) == 0o600
    key = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    line = check_node_public_key(files.public_key)
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith(" edge-7")
    # What `flwr supernode register` does with the file: parse, check the curve, serialise.
    assert try_load_public_key(files.public_key)
    check_node_private_key(files.private_key)


def test_node_key_is_never_overwritten(tmp_path: Path) -> None:
    files = create_node_key(tmp_path)
    before = files.private_key.read_bytes()

    with pytest.raises(CertificateError) as exc:
        create_node_key(tmp_path)

    _one_line(exc, "exists already")
    assert files.private_key.read_bytes() == before


def test_node_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    files = create_node_key(tmp_path)
    files.private_key.chmod(0o644)

    with pytest.raises(CertificateError) as exc:
        check_node_private_key(files.private_key)

    _one_line(exc, "readable by group or others", "chmod 600")


def test_node_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private = tmp_path / "node.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = tmp_path / "node.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )

    _node_keys_refused(private, public, "NIST curve", "NIST curve")


def test_garbage_node_keys_are_one_line(tmp_path: Path) -> None:
    private = tmp_path / "node.key"
    private.write_bytes(b"not a key")
    private.chmod(0o600)
    public = tmp_path / "node.pub"
    public.write_bytes(b"ssh-rsa nonsense")

    _node_keys_refused(
        private, public, "not an unencrypted OpenSSH private key", "not an OpenSSH public key"
    )


@pytest.mark.parametrize("comment", ["", "two words", "tab\tbed"])
def test_node_key_comment_must_be_one_word(tmp_path: Path, comment: str) -> None:
    with pytest.raises(ValueError, match="comment"):
        create_node_key(tmp_path, comment=comment)

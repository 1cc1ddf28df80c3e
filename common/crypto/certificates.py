"""TLS certificates and SuperNode authentication keys for a fedveil deployment.

With ``common.sealing`` this is the only module that imports ``cryptography``. It makes what a
Flower 1.39 deployment needs and checks it before any process starts, so a bad file ends with one
line naming it instead of a gRPC handshake failure deep inside Flower:

- a private certificate authority (``ca.pem``, ``ca.key``) and a server certificate it signs
  (``server.pem``, ``server.key``) whose subject alternative names hold the SuperLink's addresses
  (default ``127.0.0.1`` and ``localhost``); ECDSA P-256, SHA-256. The SuperLink takes
  ``--ssl-ca-certfile ca.pem --ssl-certfile server.pem --ssl-keyfile server.key``; a SuperNode and
  the ``flwr`` CLI trust ``ca.pem`` (``--root-certificates`` / ``root-certificates``).
- SuperNode authentication keys in the format Flower 1.39 reads: an ECDSA key on a NIST curve
  (P-384 here), the private key in OpenSSH format (``flower-supernode
  --auth-supernode-private-key``) and the public key as one OpenSSH line
  (``ecdsa-sha2-nistp384 AAAA...``), which ``flwr supernode register`` uploads to a SuperLink
  started with ``--enable-supernode-auth``. (1.39 refuses the older
  ``--auth-list-public-keys`` CSV.)

Private keys are written with mode 0600 from the first byte, atomically, and never over an
existing file. Every refusal is a ``CertificateError`` (a ``ValueError``) whose message is one
line naming the file and what is wrong with it; no key material is ever in a message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import SECRET_MODE, write_new

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_DAYS",
    "DEFAULT_HOSTS",
    "MAX_DAYS",
    "NODE_PRIVATE_KEY_FILE",
    "NODE_PUBLIC_KEY_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "CertificateError",
    "NodeKeyFiles",
    "TlsFiles",
    "check_certificate",
    "check_host",
    "check_node_private_key",
    "check_node_public_key",
    "check_tls_files",
    "create_node_key",
    "create_tls_files",
]

CA_CERT_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca.key"
SERVER_CERT_FILE: Final = "server.pem"
SERVER_KEY_FILE: Final = "server.key"
NODE_PRIVATE_KEY_FILE: Final = "node.key"
NODE_PUBLIC_KEY_FILE: Final = "node.pub"
DEFAULT_HOSTS: Final = ("127.0.0.1", "localhost")
DEFAULT_DAYS: Final = 365
MAX_DAYS: Final = 36_500
"""Longest validity ``create_tls_files`` issues (100 years; X.509 dates end in 9999)."""
_MAX_HOST_CHARS: Final = 253
_MAX_COMMON_NAME: Final = 64
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_CLOCK_SKEW: Final = dt.timedelta(minutes=5)
_MAX_FILE_BYTES: Final = 256 * 1024
_NIST_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class CertificateError(ValueError):
    """A certificate or key file is missing, malformed, expired, or from the wrong authority."""


@dataclass(frozen=True)
class TlsFiles:
    """Where a deployment's TLS files are (PEM)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TlsFiles:
        """Return the standard file names inside ``directory``."""
        return cls(
            directory / CA_CERT_FILE,
            directory / CA_KEY_FILE,
            directory / SERVER_CERT_FILE,
            directory / SERVER_KEY_FILE,
        )


@dataclass(frozen=True)
class NodeKeyFiles:
    """A SuperNode's authentication key pair: OpenSSH private key and public key line."""

    private_key: Path
    public_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _show(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def _exists(path: Path) -> CertificateError:
    return CertificateError(
        f"{_show(path)} exists already; refusing to overwrite it (remove or move it, or use "
        f"another folder)"
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte; never replace a file."""
    try:
        write_new(path, data, mode=mode)
    except FileExistsError:
        raise _exists(path) from None


def _refuse_existing(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise _exists(path)


def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise CertificateError(f"{_show(path)}: too large ({size} bytes) to be the {what}")
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"{_show(path)}: cannot read the {what} ({exc.strerror or exc})"
        ) from None


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedveil"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def check_host(host: str) -> x509.GeneralName:
    """Return ``host`` as a subject alternative name: an IP address, else an RFC 1123 name.

    Raises:
        ValueError: One line: neither (an all-numeric name that is no IP address is a typo).

    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if (
        len(host) > _MAX_HOST_CHARS
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or all(label.isdigit() for label in labels)
    ):
        raise ValueError(
            f"host {host!r:.80} is neither an IP address nor a DNS name (RFC 1123: letters, "
            f"digits and inner hyphens, dot-separated labels of 1 to 63 characters); give "
            f"e.g. 127.0.0.1 or superlink.example.org"
        )
    return x509.DNSName(host)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP address")
    return x509.SubjectAlternativeName([check_host(host) for host in hosts])


def create_tls_files(
    directory: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    valid_from: dt.datetime | None = None,
) -> TlsFiles:
    """Make a CA and a server certificate for ``hosts``; write them into ``directory``.

    ``hosts`` become the server certificate's subject alternative names (IP addresses as IP
    entries, RFC 1123 names as DNS names, anything else refused). Both certificates are valid
    from ``valid_from`` (default: five minutes ago, for clock skew) for ``days`` days.

    Raises:
        CertificateError: One of the four files exists already (nothing is written then).
        ValueError: ``hosts`` is empty or holds an invalid name (:func:`check_host`), or
            ``days`` is outside [1, ``MAX_DAYS``].

    """
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"`days` must be >= 1 and <= {MAX_DAYS}, got {days}")
    san = _san(hosts)
    files = TlsFiles.in_directory(Path(directory))
    _refuse_existing([files.ca_cert, files.ca_key, files.server_cert, files.server_key])
    start = (valid_from or _now()) - _CLOCK_SKEW
    end = start + _CLOCK_SKEW + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedveil deployment CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if len(hosts[0]) <= _MAX_COMMON_NAME else "fedveil SuperLink"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    _write_new(files.ca_key, _private_pem(ca_key), SECRET_MODE)
    _write_new(files.server_key, _private_pem(server_key), SECRET_MODE)
    _write_new(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signatures only, plus signing certificates and CRLs for a CA."""
    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
        **dict.fromkeys(unused, False),
    )


def _load_certificate(path: Path, what: str) -> x509.Certificate:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{_show(path)}: not a PEM X.509 certificate ({what})") from None


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{_show(path)}: the {what} is not valid yet "
            f"(valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC); check the clock"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"{_show(path)}: the {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            f"issue a new one"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _san_matches(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host.lower() in (n.lower() for n in san.get_values_for_type(x509.DNSName))


def check_certificate(
    cert_path: Path,
    *,
    ca_path: Path,
    host: str | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Check that ``cert_path`` is a currently valid certificate issued by ``ca_path``'s CA.

    With ``host``, also check that the certificate names it (IP or DNS subject alternative
    name), as a TLS client connecting to ``host`` will.

    Raises:
        CertificateError: One line: unreadable or not PEM, not valid yet, expired, the CA is not
            a CA, issued by another CA, or ``host`` missing from its names.

    """
    when = now or _now()
    ca = _load_certificate(Path(ca_path), "CA certificate")
    cert = _load_certificate(Path(cert_path), "certificate")
    _check_validity(ca, Path(ca_path), "CA certificate", when)
    if not _is_ca(ca):
        raise CertificateError(f"{_show(Path(ca_path))}: not a CA certificate (basicConstraints)")
    _check_validity(cert, Path(cert_path), "certificate", when)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{_show(Path(cert_path))}: not issued by the CA in {_show(Path(ca_path))} "
            f"(wrong CA); use the CA that signed it, or issue a new certificate"
        ) from None
    if host is not None and not _san_matches(cert, host):
        raise CertificateError(
            f"{_show(Path(cert_path))}: the certificate does not name {host} "
            f"(subject alternative names); issue one for this host"
        )


def _load_private_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"{_show(path)}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{_show(path)}: not an EC private key")
    return key


def _same_public_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not isinstance(b, ec.EllipticCurvePublicKey):
        return False
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def check_tls_files(
    files: TlsFiles, *, host: str = DEFAULT_HOSTS[0], now: dt.datetime | None = None
) -> None:
    """Check a SuperLink's TLS files: certificate valid for ``host``, issued by the CA, key fits.

    Raises:
        CertificateError: One line naming the file that is wrong and how.

    """
    check_certificate(files.server_cert, ca_path=files.ca_cert, host=host, now=now)
    key = _load_private_key(files.server_key, "server private key")
    cert = _load_certificate(files.server_cert, "certificate")
    if not _same_public_key(key.public_key(), cert.public_key()):
        raise CertificateError(
            f"{_show(files.server_key)}: this private key does not belong to "
            f"{_show(files.server_cert)}"
        )


def create_node_key(directory: Path, *, comment: str = "fedveil-supernode") -> NodeKeyFiles:
    """Make a SuperNode authentication key pair (ECDSA P-384) in ``directory``.

    Writes ``node.key`` (OpenSSH private key, mode 0600) and ``node.pub`` (one OpenSSH public key
    line, ``ecdsa-sha2-nistp384 AAAA... comment``), the formats ``flower-supernode
    --auth-supernode-private-key`` and ``flwr supernode register`` read in Flower 1.39.

    Raises:
        CertificateError: A key file exists already (nothing is overwritten).

    """
    if not comment or any(c.isspace() for c in comment) or not comment.isprintable():
        raise ValueError(f"`comment` must be one printable word, got {comment!r}")
    directory = Path(directory)
    files = NodeKeyFiles(directory / NODE_PRIVATE_KEY_FILE, directory / NODE_PUBLIC_KEY_FILE)
    _refuse_existing([files.private_key, files.public_key])
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_new(files.private_key, private, SECRET_MODE)
    _write_new(files.public_key, public + b" " + comment.encode() + b"\n", 0o644)
    return files


def _nist(curve: ec.EllipticCurve) -> bool:
    return isinstance(curve, _NIST_CURVES)


def check_node_private_key(path: Path) -> None:
    """Check a SuperNode's authentication private key as Flower 1.39 will read it.

    Raises:
        CertificateError: Unreadable, readable by group or others, not an OpenSSH private key, or
            not an EC key on a NIST curve.

    """
    path = Path(path)
    data = _read(path, "SuperNode private key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CertificateError(
            f"{_show(path)}: the SuperNode private key is readable by group or others "
            f"(mode {mode:04o}); run `chmod 600 {_show(path)}`"
        )
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(
            f"{_show(path)}: not an unencrypted OpenSSH private key; make one with "
            f"`fedveil keys generate --node DIR`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _nist(key.curve):
        raise CertificateError(f"{_show(path)}: a SuperNode key must be ECDSA on a NIST curve")


def check_node_public_key(path: Path) -> str:
    """Check a SuperNode public key line as ``flwr supernode register`` will; return the line.

    Raises:
        CertificateError: Unreadable, not an OpenSSH public key, or not ECDSA on a NIST curve.

    """
    path = Path(path)
    data = _read(path, "SuperNode public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{_show(path)}: not an OpenSSH public key line") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not _nist(key.curve):
        raise CertificateError(f"{_show(path)}: a SuperNode key must be ECDSA on a NIST curve")
    return data.decode("ascii").strip()
